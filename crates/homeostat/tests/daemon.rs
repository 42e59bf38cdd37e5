//! `homeostat daemon` on the real kernel (root, BPF, BTF; skips with a message
//! otherwise): a private copy of ls is learnt until normal, an unusual run of it
//! raises anomalies with its pid, SIGINT saves the profile, and a restarted daemon
//! loads it as normal and detects with it. With enforce, a private shell is stopped at
//! its first anomaly, delayed, refused an execve, and let go once its LFC is 0.

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use homeostat_testsupport::daemon::{events, ready};
use homeostat_testsupport::spawn;
use serde_json::Value;

fn output(cmd: &mut Command) -> std::process::Output {
    spawn(cmd.stdout(Stdio::piped()).stderr(Stdio::piped()))
        .wait_with_output()
        .unwrap()
}

fn daemon(state: &Path, events: &Path, extra: &[&str]) -> (Child, Receiver<String>) {
    homeostat_testsupport::daemon::start(
        Path::new(env!("CARGO_BIN_EXE_homeostat")),
        state,
        events,
        extra,
    )
}

fn has(evs: &[Value], f: impl Fn(&Value) -> bool) -> bool {
    evs.iter().any(f)
}

#[test]
fn learns_detects_saves_and_reloads() {
    if !homeostat_testsupport::daemon::possible() {
        return;
    }
    let t0 = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let lsc = dir.path().join("ls-copy");
    std::fs::copy("/usr/bin/ls", &lsc).unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    for f in ["a", "b", "c"] {
        std::fs::write(data.join(f), f).unwrap();
    }
    let m = std::fs::metadata(&lsc).unwrap();
    let key = format!("{:x}-{:x}", m.dev(), m.ino());
    let state = dir.path().join("state");
    let ev1 = dir.path().join("ev1.jsonl");

    let (mut d, rx) = daemon(
        &state,
        &ev1,
        &["--duration", "25", "--normal-wait", "0.5", "--detect"],
    );
    if ready(&mut d, &rx).is_none() {
        return;
    }
    let run = |args: &[&Path]| {
        let c = spawn(
            Command::new(&lsc)
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
        let pid = c.id();
        c.wait_with_output().unwrap();
        pid
    };
    let mine = |e: &Value| e["profile"] == key.as_str();
    // Learn: the same run until the profile is normal.
    let t = Instant::now();
    loop {
        for _ in 0..5 {
            run(&[&data]);
        }
        std::thread::sleep(Duration::from_millis(100));
        let evs = events(&ev1);
        if has(&evs, |e| {
            mine(e) && e["event"] == "state_change" && e["to"] == "normal"
        }) {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(12),
            "ls copy not normal after 12 s"
        );
    }
    // Detect: a different run of the same program.
    let weird = [
        Path::new("-laR"),
        Path::new("/nonexistent"),
        Path::new("/proc/self/"),
    ];
    let pid = run(&weird);
    let t = Instant::now();
    while !has(&events(&ev1), |e| {
        mine(e) && e["event"] == "anomaly" && e["pid"] == pid
    }) {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "no anomaly for pid {pid}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let evs = events(&ev1);
    let a = evs
        .iter()
        .find(|e| mine(e) && e["event"] == "anomaly" && e["pid"] == pid)
        .unwrap();
    assert_eq!(a["state"], "normal");
    assert_eq!(a["action"], "none");
    assert!(a["lfc"].as_u64().unwrap() > 0, "{a}");
    assert!(a["misses"].as_u64().unwrap() > 0, "{a}");
    assert!(a["exe"].as_str().unwrap().ends_with("ls-copy"), "{a}");
    assert!(!a["syscall"].as_str().unwrap().is_empty(), "{a}");

    // SIGINT: clean stop, profile saved as normal.
    unsafe { libc::kill(d.id() as i32, libc::SIGINT) };
    let st = d.wait().unwrap();
    assert!(st.success(), "{st}");
    let saved: Value =
        serde_json::from_slice(&std::fs::read(state.join(format!("daemon/{key}.json"))).unwrap())
            .unwrap();
    assert_eq!(saved["state"], "normal");
    assert!(!saved["pairs"].as_array().unwrap().is_empty());

    // Shared profiles, daemon -> run: `profile show` reads the daemon's file, and
    // `homeostat run` starts the ls copy from the daemon's normal profile (the trained
    // run has no anomaly, the unusual one has).
    let show = Command::new(env!("CARGO_BIN_EXE_homeostat"))
        .args(["profile", "show", "ls-copy", "--state-dir"])
        .arg(&state)
        .output()
        .unwrap();
    let show = String::from_utf8_lossy(&show.stdout);
    assert!(
        show.contains("(homeostat daemon)") && show.contains("normal"),
        "{show}"
    );
    let hs_run = |ev: &Path, extra: &[&str], cmd: &[&Path]| {
        // Output to /dev/null as in the daemon's training runs (ls behaves
        // differently writing to a pipe).
        let st = spawn(
            Command::new(env!("CARGO_BIN_EXE_homeostat"))
                .args(["run", "--quiet", "--state-dir"])
                .arg(&state)
                .arg("--events")
                .arg(ev)
                .args(extra)
                .arg("--")
                .args(cmd)
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )
        .wait()
        .unwrap();
        // (ls of /nonexistent exits 2, like a usage error would: the events tell.)
        assert!(st.code().is_some(), "{st}");
        events(ev)
    };
    let evr = dir.path().join("run1.jsonl");
    let evs = hs_run(&evr, &["--detect"], &[&lsc, &data]);
    assert!(
        has(&evs, |e| mine(e)
            && e["event"] == "profile_created"
            && e["from"] == "daemon"
            && e["state"] == "normal"),
        "not seeded from the daemon: {evs:?}"
    );
    assert!(!has(&evs, |e| e["event"] == "anomaly"), "{evs:?}");
    let evr = dir.path().join("run2.jsonl");
    let mut weird_cmd: Vec<&Path> = vec![&lsc];
    weird_cmd.extend(weird.iter());
    let evs = hs_run(&evr, &["--detect"], &weird_cmd);
    assert!(has(&evs, |e| mine(e) && e["event"] == "anomaly"), "{evs:?}");

    // Run -> daemon: a program only `homeostat run` learnt seeds the daemon.
    let catc = dir.path().join("cat-copy");
    std::fs::copy("/usr/bin/cat", &catc).unwrap();
    let m = std::fs::metadata(&catc).unwrap();
    let cat_key = format!("{:x}-{:x}", m.dev(), m.ino());
    let evr = dir.path().join("run3.jsonl");
    let evs = hs_run(&evr, &["--learn"], &[&catc, &data.join("a")]);
    assert!(has(&evs, |e| e["event"] == "profile_created"), "{evs:?}");

    // Restart: loaded as normal, detects at once.
    let ev2 = dir.path().join("ev2.jsonl");
    let (mut d, rx) = daemon(&state, &ev2, &["--duration", "3", "--detect"]);
    ready(&mut d, &rx).expect("BPF worked a moment ago");
    let pid = run(&weird);
    let st = d.wait().unwrap();
    assert!(st.success(), "{st}");
    let evs = events(&ev2);
    assert!(
        has(&evs, |e| mine(e)
            && e["event"] == "profile_loaded"
            && e["state"] == "normal"),
        "profile not loaded as normal"
    );
    assert!(
        has(&evs, |e| mine(e)
            && e["event"] == "anomaly"
            && e["pid"] == pid),
        "no anomaly after reload"
    );
    assert!(
        has(&evs, |e| e["profile"] == cat_key.as_str()
            && e["event"] == "profile_loaded"
            && e["from"] == "homeostat run"),
        "cat copy not seeded from homeostat run's profile"
    );
    eprintln!("daemon test took {:.1} s", t0.elapsed().as_secs_f64());
}

/// A private copy of dash, a data file and the trained script: 300 reads of the file
/// by shell builtins only (no fork), so every run is the same calls.
struct Shell {
    dir: tempfile::TempDir,
    sh: std::path::PathBuf,
    key: String,
    trained: String,
}

fn shell() -> Shell {
    let dir = tempfile::tempdir().unwrap();
    let sh = dir.path().join("sh-copy");
    std::fs::copy("/usr/bin/dash", &sh).unwrap();
    let data = dir.path().join("data");
    std::fs::write(&data, "x\n").unwrap();
    let m = std::fs::metadata(&sh).unwrap();
    let key = format!("{:x}-{:x}", m.dev(), m.ino());
    let trained = format!(
        "i=0; while [ $i -lt 300 ]; do read x < {}; i=$((i+1)); done; echo done",
        data.display()
    );
    Shell {
        dir,
        sh,
        key,
        trained,
    }
}

/// Runs the shell until the daemon's events say its profile is normal.
fn train_until_normal(s: &Shell, ev: &Path) {
    let t = Instant::now();
    loop {
        for _ in 0..5 {
            let o = output(Command::new(&s.sh).arg("-c").arg(&s.trained));
            assert!(o.status.success());
        }
        std::thread::sleep(Duration::from_millis(100));
        if has(&events(ev), |e| {
            e["profile"] == s.key.as_str() && e["event"] == "state_change" && e["to"] == "normal"
        }) {
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "shell not normal after 20 s"
        );
    }
}

fn state_of(pid: u32) -> Option<char> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s.rsplit(')').next()?.trim().chars().next()
}

#[test]
fn enforce_stops_delays_refuses_execve_and_lets_go() {
    if !homeostat_testsupport::daemon::possible() {
        return;
    }
    let s = shell();
    let state = s.dir.path().join("state");
    let ev = s.dir.path().join("ev.jsonl");
    // Small delays so the test is quick; execve refused from LFC 1.
    let conf = shell_config(
        &s,
        "delay_factor_ms = 0.5\nmax_delay_ms = 8.0\nsuspend_execve = 1\n",
        true,
    );
    let Some((mut d, _rx)) = shell_daemon(&s, &conf, &ev) else {
        return;
    };
    train_until_normal(&s, &ev);

    // New behaviour first (calls dash's trained run never made), then a command (fork
    // + execve while the LFC is high), then the trained loop, long enough for the
    // locality frame to empty.
    let script = format!(
        "umask 077; cd /; kill -0 $$; /bin/true; echo rc=$?; {}",
        s.trained
    );
    let t = Instant::now();
    let out = output(Command::new(&s.sh).arg("-c").arg(&script));
    let took = t.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The execve was refused (dash reports 126 for a command it cannot execute), and
    // the shell itself ran to its end.
    assert!(
        stdout.contains("rc=126"),
        "stdout {stdout:?} stderr {stderr:?}"
    );
    assert!(stdout.contains("done"), "{stdout:?}");
    assert!(out.status.success());

    std::thread::sleep(Duration::from_millis(400));
    let evs = events(&ev);
    let mine: Vec<&Value> = evs
        .iter()
        .filter(|e| {
            e["profile"] == s.key.as_str()
                || e["exe"].as_str().is_some_and(|x| x.ends_with("sh-copy"))
        })
        .collect();
    let stop = mine
        .iter()
        .find(|e| e["event"] == "anomaly" && e["action"] == "stop")
        .unwrap_or_else(|| panic!("no stop: {mine:?}"));
    let pid = stop["pid"].as_u64().unwrap();
    assert_eq!(stop["state"], "normal");
    let first = evs
        .iter()
        .find(|e| e["event"] == "delay_start" && e["pid"] == pid)
        .expect("no delay_start");
    // pH's delay for the LFC the call has: delay_factor x 2^LFC, capped.
    let lfc = first["lfc"].as_u64().unwrap();
    assert!(lfc >= 1, "{first}");
    let want = (0.5 * 2f64.powi(lfc as i32)).min(8.0);
    assert!(
        (first["delay_ms"].as_f64().unwrap() - want).abs() < 1e-6,
        "{first}"
    );
    assert!(
        has(&evs, |e| e["event"] == "exec_refused"
            && e["action"] == "refuse_exec"),
        "no exec_refused: {mine:?}"
    );
    let end = evs
        .iter()
        .find(|e| e["event"] == "delay_stop" && e["pid"] == pid)
        .unwrap_or_else(|| panic!("no delay_stop for {pid}"));
    assert_eq!(end["why"], "LFC back to 0", "{end}");
    let delays = end["delays"].as_u64().unwrap();
    assert!(delays > 0, "{end}");
    // Each delay is at least delay_factor x 2 = 1 ms.
    assert!(
        took >= Duration::from_millis(delays),
        "{delays} delays in {took:?}"
    );
    eprintln!("shell under response: {delays} delayed calls, ran {took:?}");

    // `homeostat status` sees the response.
    let st = Command::new(env!("CARGO_BIN_EXE_homeostat"))
        .args(["status", "--json", "--state-dir"])
        .arg(&state)
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&st.stdout).unwrap();
    assert!(v[0]["responses"].as_u64().unwrap() >= 1, "{v}");
    assert!(v[0]["execve_refused"].as_u64().unwrap() >= 1, "{v}");
    assert_eq!(v[0]["losses"]["lost_events"], 0, "{v}");

    // Administration through the daemon: ps lists the host's tasks with their
    // profiles, profile list shows the daemon's profiles, sensitize works on them.
    let ps = homeostat(&["ps", "--json"], &state);
    let tasks = ps[0]["tasks"].as_array().unwrap();
    assert!(
        tasks.iter().any(|t| t["pid"] == std::process::id()),
        "this test process is not in ps: {} tasks",
        tasks.len()
    );
    let list = Command::new(env!("CARGO_BIN_EXE_homeostat"))
        .args(["profile", "list", "--state-dir"])
        .arg(&state)
        .output()
        .unwrap();
    let list = String::from_utf8_lossy(&list.stdout);
    assert!(
        list.lines()
            .any(|l| l.contains("sh-copy") && l.starts_with("normal") && l.contains("(daemon")),
        "{list}"
    );
    let o = Command::new(env!("CARGO_BIN_EXE_homeostat"))
        .args([
            "profile",
            "sensitize",
            s.sh.to_str().unwrap(),
            "--state-dir",
        ])
        .arg(&state)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::thread::sleep(Duration::from_millis(300));
    assert!(has(&events(&ev), |e| e["profile"] == s.key.as_str()
        && e["event"] == "state_change"
        && e["to"] == "training"
        && e["reason"] == "sensitized"));

    unsafe { libc::kill(d.id() as i32, libc::SIGTERM) };
    assert!(d.wait().unwrap().success());
    assert_eq!(state_of(pid as u32), None, "the shell is gone");
}

/// Writes the private-shell config: host `detect` with `ph` added, and with
/// `enforce_shell` the shell `enforce` (so only it responds: with a normal_wait this
/// short the machine's other programs, the test harness, cargo..., are never stopped).
fn shell_config(s: &Shell, ph: &str, enforce_shell: bool) -> std::path::PathBuf {
    let conf = s.dir.path().join("ph.toml");
    let modes = if enforce_shell {
        format!("[modes]\n\"{}\" = \"enforce\"\n", s.sh.display())
    } else {
        String::new()
    };
    std::fs::write(&conf, format!("[ph]\nmode = \"detect\"\n{ph}\n{modes}")).unwrap();
    conf
}

/// A daemon for the shell tests (config `conf`, normal_wait 0.5 s, events to `ev`),
/// ready; `None` (after saying why) when BPF is unavailable.
fn shell_daemon(s: &Shell, conf: &Path, ev: &Path) -> Option<(Child, Receiver<String>)> {
    let state = s.dir.path().join("state");
    let conf = conf.to_str().unwrap();
    let args = ["--duration", "60", "--normal-wait", "0.5", "--config", conf];
    let (mut d, rx) = daemon(&state, ev, &args);
    ready(&mut d, &rx)?;
    Some((d, rx))
}

fn wait_exit(c: &mut Child, within: Duration) -> Option<std::process::ExitStatus> {
    let t = Instant::now();
    while t.elapsed() < within {
        if let Some(st) = c.try_wait().unwrap() {
            return Some(st);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

fn homeostat(args: &[&str], state: &Path) -> Value {
    let o = Command::new(env!("CARGO_BIN_EXE_homeostat"))
        .args(args)
        .arg("--state-dir")
        .arg(state)
        .output()
        .unwrap();
    serde_json::from_slice(&o.stdout).unwrap_or(Value::Null)
}

/// SIGKILL of the daemon in its two dangerous moments: a process under response (the
/// tracer dies: the kernel detaches it) and a process stopped but not yet taken over
/// (the keeper resumes it). Saved profiles stay intact and a restart resumes.
#[test]
fn sigkill_leaves_nothing_stopped_and_restart_resumes() {
    if !homeostat_testsupport::daemon::possible() {
        return;
    }
    let s = shell();
    let state = s.dir.path().join("state");
    // Long delays, so the process is still under response when the daemon dies.
    let conf = shell_config(&s, "delay_factor_ms = 20.0\nmax_delay_ms = 200.0\n", true);
    let ev = s.dir.path().join("ev.jsonl");
    let Some((mut d, _rx)) = shell_daemon(&s, &conf, &ev) else {
        return;
    };
    train_until_normal(&s, &ev);
    // `homeostat status` asks nothing to save; `ps` neither: save through the admin
    // path (profile list has running monitors save first).
    Command::new(env!("CARGO_BIN_EXE_homeostat"))
        .args(["profile", "list", "--state-dir"])
        .arg(&state)
        .output()
        .unwrap();
    let file = state.join(format!("daemon/{}.json", s.key));
    let saved = std::fs::read(&file).unwrap();
    let v: Value = serde_json::from_slice(&saved).unwrap();
    assert_eq!(v["state"], "normal");

    let weird = format!("umask 077; cd /; kill -0 $$; {}", s.trained);
    let start = || {
        spawn(
            Command::new(&s.sh)
                .arg("-c")
                .arg(&weird)
                .stdout(Stdio::null()),
        )
    };
    // 1. Under response (delays running), then SIGKILL.
    let mut victim = start();
    let t = Instant::now();
    while !has(&events(&ev), |e| {
        e["event"] == "delay_start" && e["pid"] == victim.id()
    }) {
        assert!(t.elapsed() < Duration::from_secs(10), "no response started");
        std::thread::sleep(Duration::from_millis(20));
    }
    d.kill().unwrap();
    d.wait().unwrap();
    let st = wait_exit(&mut victim, Duration::from_secs(20))
        .unwrap_or_else(|| panic!("victim still there, state {:?}", state_of(victim.id())));
    assert!(st.success(), "{st}");

    // 2. Stopped by the kernel while the daemon cannot take it over (frozen with
    // SIGSTOP), then SIGKILL: the keeper resumes it.
    let ev2 = s.dir.path().join("ev2.jsonl");
    let (mut d, _rx) = shell_daemon(&s, &conf, &ev2).expect("BPF worked a moment ago");
    assert!(has(&events(&ev2), |e| e["event"] == "profile_loaded"
        && e["profile"] == s.key.as_str()
        && e["state"] == "normal"));
    unsafe { libc::kill(d.id() as i32, libc::SIGSTOP) };
    let mut victim = start();
    let t = Instant::now();
    while state_of(victim.id()) != Some('T') {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the kernel did not stop it"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    d.kill().unwrap();
    d.wait().unwrap();
    let st = wait_exit(&mut victim, Duration::from_secs(20))
        .unwrap_or_else(|| panic!("victim left {:?}", state_of(victim.id())));
    assert!(st.success(), "{st}");
    // Saved before both kills, never half-written.
    let now: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(now["state"], "normal");
    assert_eq!(now["pairs"], v["pairs"]);

    // 3. Restart: the profile is back as normal and responds again.
    let ev3 = s.dir.path().join("ev3.jsonl");
    let (mut d, _rx) = shell_daemon(&s, &conf, &ev3).expect("BPF worked a moment ago");
    let mut victim = start();
    assert!(wait_exit(&mut victim, Duration::from_secs(30)).is_some_and(|s| s.success()));
    std::thread::sleep(Duration::from_millis(300));
    let evs = events(&ev3);
    assert!(
        has(&evs, |e| e["event"] == "delay_stop"
            && e["pid"] == victim.id()),
        "no response after restart"
    );
    unsafe { libc::kill(d.id() as i32, libc::SIGTERM) };
    assert!(d.wait().unwrap().success());
}

/// Load: 4 parallel `dd bs=1` loops and fork/exec churn for 30 s under the daemon
/// (profiles learnt and becoming normal meanwhile): no event lost, every process ends,
/// none is left stopped, and the daemon answers `status` throughout.
#[test]
fn thirty_seconds_of_load_lose_nothing_and_stop_nothing() {
    if !homeostat_testsupport::daemon::possible() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let ev = dir.path().join("ev.jsonl");
    let (mut d, rx) = daemon(
        &state,
        &ev,
        &[
            "--duration",
            "120",
            "--normal-wait",
            "2",
            "--detect",
            "--quiet",
            "--metrics",
            "127.0.0.1:0",
        ],
    );
    let Some(lines) = ready(&mut d, &rx) else {
        return;
    };
    let metrics = lines
        .iter()
        .find_map(|l| l.split("http://").nth(1))
        .map(|a| a.trim_end_matches("/metrics").to_string())
        .expect("no metrics address printed");
    let secs = 30;
    let dd = format!(
        "end=$(( $(date +%s) + {secs} )); while [ $(date +%s) -lt $end ]; do \
         dd if=/dev/zero of=/dev/null bs=1 count=200000 2>/dev/null; done"
    );
    let churn = format!(
        "end=$(( $(date +%s) + {secs} )); n=0; while [ $(date +%s) -lt $end ]; do \
         /bin/true; ls / >/dev/null; n=$((n+1)); done; echo $n"
    );
    let mut kids: Vec<Child> = (0..4)
        .map(|_| Command::new("sh").arg("-c").arg(&dd).spawn().unwrap())
        .collect();
    kids.push(
        Command::new("sh")
            .arg("-c")
            .arg(&churn)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let t = Instant::now();
    let mut answered = 0;
    while t.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_secs(5));
        let v = homeostat(&["status", "--json"], &state);
        if v[0]["daemon"] == true {
            answered += 1;
        }
    }
    for k in &mut kids {
        let st = wait_exit(k, Duration::from_secs(30))
            .unwrap_or_else(|| panic!("a load process did not end: {:?}", state_of(k.id())));
        assert!(st.success(), "{st}");
    }
    let mut out = String::new();
    kids[4]
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let forks: u64 = out.trim().parse().unwrap();
    std::thread::sleep(Duration::from_millis(1200)); // one tick: metrics refreshed
    let v = homeostat(&["status", "--json"], &state);
    let text = Command::new(env!("CARGO_BIN_EXE_homeostat"))
        .args(["status", "--state-dir"])
        .arg(&state)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    // The status line, with the count the JSON gives (> 0: load ran on the general path).
    let general: u64 = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("  calls on the general path (every task's, not the common call): ")
        })
        .unwrap_or_else(|| panic!("no general-path line: {text}"))
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("general-path count: {e}: {text}"));
    assert!(general > 0, "{text}");
    let scrape = {
        use std::io::Write;
        let mut c = std::net::TcpStream::connect(&metrics).unwrap();
        c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut body = String::new();
        c.read_to_string(&mut body).unwrap();
        body
    };
    unsafe { libc::kill(d.id() as i32, libc::SIGTERM) };
    assert!(d.wait().unwrap().success());
    eprintln!("load: {forks} fork+exec rounds; status {v}");
    assert!(scrape.starts_with("HTTP/1.1 200"), "{scrape}");
    assert!(
        scrape.contains("\nhomeostat_lost_events_total 0\n"),
        "{scrape}"
    );
    let scraped: u64 = scrape
        .lines()
        .find_map(|l| l.strip_prefix("homeostat_events_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(scraped > 0, "{scrape}");
    assert!(answered >= 4, "status answered {answered} of 6 times");
    assert!(forks > 100, "{forks}");
    for k in [
        "lost_events",
        "rows_full",
        "tasks_full",
        "profiles_full",
        "stops_failed",
    ] {
        assert_eq!(v[0]["losses"][k], 0, "{k}: {v}");
    }
    assert!(
        !has(&events(&ev), |e| e["event"] == "kernel_losses"),
        "losses reported"
    );
    assert!(v[0]["events"].as_u64().unwrap() > 0);
    // Every new task's first calls take the general path.
    assert!(v[0]["general_calls"].as_u64().unwrap() > 0, "{v}");
}

/// pH's limits in the daemon: more than anomaly_limit anomalies send a normal profile
/// back to training; an LFC above tolerize_limit starts a tolerized episode whose
/// anomalies do not count (as in `homeostat run`).
#[test]
fn anomaly_limit_and_tolerize_limit() {
    if !homeostat_testsupport::daemon::possible() {
        return;
    }
    for (tolerize, want) in [(1000, "anomaly_limit"), (1, "tolerized")] {
        let s = shell();
        let ev = s.dir.path().join("ev.jsonl");
        let ph = format!("anomaly_limit = 2\ntolerize_limit = {tolerize}\n");
        let conf = shell_config(&s, &ph, false);
        let Some((mut d, _rx)) = shell_daemon(&s, &conf, &ev) else {
            return;
        };
        train_until_normal(&s, &ev);
        let weird = format!("umask 077; cd /; kill -0 $$; ulimit -n; {}", s.trained);
        let o = output(Command::new(&s.sh).arg("-c").arg(&weird));
        assert!(o.status.success());
        std::thread::sleep(Duration::from_millis(1500));
        let evs = events(&ev);
        let mine = |e: &&Value| e["profile"] == s.key.as_str();
        let anomalies = evs
            .iter()
            .filter(mine)
            .filter(|e| e["event"] == "anomaly")
            .count();
        assert!(
            anomalies > 2,
            "only {anomalies} anomalies: the test needs more"
        );
        let back = evs.iter().filter(mine).any(|e| {
            e["event"] == "state_change" && e["to"] == "training" && e["reason"] == "anomaly_limit"
        });
        let tolerized = evs.iter().filter(mine).any(|e| e["event"] == "tolerized");
        if want == "anomaly_limit" {
            assert!(
                back && !tolerized,
                "{anomalies} anomalies, no anomaly_limit"
            );
        } else {
            assert!(
                tolerized && !back,
                "tolerized {tolerized}, back to training {back}"
            );
        }
        unsafe { libc::kill(d.id() as i32, libc::SIGTERM) };
        assert!(d.wait().unwrap().success());
    }
}

/// `homeostat demo --daemon`, end to end: the note service learnt by the daemon, its
/// exploit stopped, delayed and refused its shell.
#[test]
fn the_daemon_demo_stops_the_exploit() {
    if !homeostat_testsupport::daemon::possible() {
        return;
    }
    let o = output(Command::new(env!("CARGO_BIN_EXE_homeostat")).args(["demo", "--daemon"]));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(out.contains("STOPPED by the kernel"), "{out}");
    assert!(out.contains("execve REFUSED"), "{out}");
    assert!(out.contains("attacker got the shell's output: no"), "{out}");
}

/// A static x86_64 program of 120 header bytes and 23 code bytes: getpid, getpid,
/// exit_group(0). Each copy is a new inode, so a new profile: a build's throwaway
/// binary at the least cost.
fn tiny_elf() -> Vec<u8> {
    let code: Vec<u8> = vec![
        0xb8, 39, 0, 0, 0, 0x0f, 0x05, // mov eax, getpid; syscall
        0xb8, 39, 0, 0, 0, 0x0f, 0x05, // again
        0xb8, 231, 0, 0, 0, // mov eax, exit_group
        0x31, 0xff, 0x0f, 0x05, // xor edi, edi; syscall
    ];
    let base = 0x40_0000u64;
    let total = (64 + 56 + code.len()) as u64;
    let mut f = vec![0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    f.extend(2u16.to_le_bytes()); // ET_EXEC
    f.extend(0x3eu16.to_le_bytes()); // x86_64
    f.extend(1u32.to_le_bytes());
    f.extend((base + 120).to_le_bytes()); // entry
    f.extend(64u64.to_le_bytes()); // program headers
    f.extend(0u64.to_le_bytes()); // no sections
    f.extend(0u32.to_le_bytes());
    for v in [64u16, 56, 1, 64, 0, 0] {
        f.extend(v.to_le_bytes());
    }
    f.extend(1u32.to_le_bytes()); // PT_LOAD
    f.extend(5u32.to_le_bytes()); // r-x
    f.extend(0u64.to_le_bytes());
    f.extend(base.to_le_bytes());
    f.extend(base.to_le_bytes());
    f.extend(total.to_le_bytes());
    f.extend(total.to_le_bytes());
    f.extend(0x1000u64.to_le_bytes());
    f.extend(code);
    f
}

/// Writes an executable and runs it; retries while another thread of this test
/// process holds a copy of the file's descriptor across its fork (ETXTBSY).
fn write_and_run(path: &Path, bytes: &[u8]) {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o755)
        .open(path)
        .unwrap();
    std::io::Write::write_all(&mut f, bytes).unwrap();
    drop(f);
    for _ in 0..1000 {
        match Command::new(path).status() {
            Ok(st) => {
                assert!(st.success(), "{}: {st}", path.display());
                return;
            }
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => {
                std::thread::sleep(Duration::from_millis(1))
            }
            Err(e) => panic!("{}: {e}", path.display()),
        }
    }
    panic!("{}: text file busy for 1 s", path.display());
}

/// The daemon's live profiles (`profile list --json`, source daemon).
fn daemon_profiles(state: &Path) -> Vec<Value> {
    match homeostat(&["profile", "list", "--json"], state) {
        Value::Array(v) => v.into_iter().filter(|p| p["source"] == "daemon").collect(),
        other => panic!("profile list --json: {other}"),
    }
}

fn key_of(p: &Path) -> String {
    let m = std::fs::metadata(p).unwrap();
    format!("{:x}-{:x}", m.dev(), m.ino())
}

/// A build machine's lifetime in small: 10,000 throwaway executables (new inodes: half
/// deleted after their run, half left on disk) against a daemon whose kernel map holds
/// 512 profiles. Eviction keeps the map below 90%, reports what it evicts (status,
/// events), keeps a normal profile, and new executables are still watched after.
#[test]
fn ten_thousand_throwaway_executables_are_evicted_and_normal_profiles_survive() {
    if !homeostat_testsupport::daemon::possible() {
        return;
    }
    let s = shell();
    let ev = s.dir.path().join("ev.jsonl");
    let conf = shell_config(&s, "", false);
    let state = s.dir.path().join("state");
    let args = [
        "--duration",
        "900",
        "--normal-wait",
        "0.5",
        "--max-profiles",
        "512",
        "--config",
        conf.to_str().unwrap(),
    ];
    let (mut d, rx) = daemon(&state, &ev, &args);
    if ready(&mut d, &rx).is_none() {
        return;
    }
    train_until_normal(&s, &ev);
    let elf = tiny_elf();
    let bins = s.dir.path().join("bins");
    std::fs::create_dir(&bins).unwrap();
    let t = Instant::now();
    // The file system hands a deleted file's inode to the next new file: fewer
    // distinct profiles than executables (counted here).
    let mut inodes = std::collections::HashSet::new();
    for i in 0..10_000 {
        let f = bins.join(format!("t{i}"));
        write_and_run(&f, &elf);
        inodes.insert(std::fs::metadata(&f).unwrap().ino());
        if i % 2 == 0 {
            std::fs::remove_file(&f).unwrap();
        }
    }
    let storm = t.elapsed();
    // The next look for deleted executables (every 10 s), and a tick.
    std::thread::sleep(Duration::from_secs(12));
    let st = homeostat(&["status", "--json"], &state);
    let st = st
        .as_array()
        .and_then(|a| a.iter().find(|s| s["pid"] == d.id()))
        .unwrap_or_else(|| panic!("no status from the daemon: {st}"))
        .clone();
    let (deleted, lru) = (
        st["evicted"]["deleted"].as_u64().unwrap(),
        st["evicted"]["lru"].as_u64().unwrap(),
    );
    let full = st["losses"]["profiles_full"].as_u64().unwrap();
    eprintln!(
        "10,000 executables ({} distinct inodes) in {:.1} s; evicted {deleted} (deleted executables) + {lru} (LRU); {full} execs found the map full",
        inodes.len(),
        storm.as_secs_f64()
    );
    assert!(deleted > 0, "no deleted executable evicted: {st}");
    assert!(lru > 0, "no LRU eviction with 5,000 live throwaways: {st}");
    let p = &st["profiles"];
    let held = p["training"].as_u64().unwrap()
        + p["frozen"].as_u64().unwrap()
        + p["normal"].as_u64().unwrap();
    assert!(held <= 512, "{held} profiles in a map of 512");
    // Every eviction is an event with its reason.
    let evs = events(&ev);
    let evicted: Vec<&Value> = evs
        .iter()
        .filter(|e| e["event"] == "profile_evicted")
        .collect();
    assert_eq!(evicted.len() as u64, deleted + lru);
    const REPLACED: &str = "executable replaced (its inode number reused by another file)";
    assert!(evicted.iter().all(|e| e["reason"] == "deleted executable"
        || e["reason"] == "map near full"
        || e["reason"] == REPLACED));
    // A deleted file's inode number handed to the next file: that file is not judged
    // by the old one's profile, which is replaced at its exec (counted with deleted).
    let replaced = evicted.iter().filter(|e| e["reason"] == REPLACED).count();
    eprintln!("{replaced} profiles replaced at the exec of a file reusing their inode number");
    assert!(
        inodes.len() == 10_000 || replaced > 0,
        "inode numbers were reused but no profile was replaced"
    );
    // The normal profile survived (never evicted, still normal) and still detects.
    assert!(!evicted.iter().any(|e| e["profile"] == s.key.as_str()));
    let weird = format!("umask 077; cd /; kill -0 $$; ulimit -n; {}", s.trained);
    assert!(output(Command::new(&s.sh).arg("-c").arg(&weird))
        .status
        .success());
    // Watching goes on: a new executable after the storm gets its profile.
    let fresh = s.dir.path().join("fresh");
    write_and_run(&fresh, &elf);
    std::thread::sleep(Duration::from_millis(1500));
    let live = daemon_profiles(&state);
    let shell_now = live
        .iter()
        .find(|p| p["key"] == s.key.as_str())
        .expect("the normal profile is gone");
    assert_eq!(shell_now["state"], "normal");
    assert!(
        live.iter().any(|p| p["key"] == key_of(&fresh).as_str()),
        "the executable run after the storm has no profile"
    );
    assert!(has(&events(&ev), |e| e["profile"] == s.key.as_str()
        && e["event"] == "anomaly"));
    unsafe { libc::kill(d.id() as i32, libc::SIGTERM) };
    assert!(d.wait().unwrap().success());
    let log: Vec<String> = rx.try_iter().collect();
    assert!(
        log.iter().any(|l| l.contains("profiles evicted")),
        "eviction not logged"
    );
}

/// Names: a profile is named by the executable's own path; every path it is run by
/// is kept (a hard link, a symbolic link), and a script run through it as its `#!`
/// interpreter is recorded as a script of the interpreter's profile, not as its name.
#[test]
fn profiles_keep_every_path_and_scripts_beside_their_interpreter() {
    if !homeostat_testsupport::daemon::possible() {
        return;
    }
    let s = shell();
    let ev = s.dir.path().join("ev.jsonl");
    let conf = shell_config(&s, "", false);
    let Some((mut d, _rx)) = shell_daemon(&s, &conf, &ev) else {
        return;
    };
    let dir = s.dir.path();
    let hard = dir.join("sh-hard");
    std::fs::hard_link(&s.sh, &hard).unwrap();
    let sym = dir.join("sh-sym");
    std::os::unix::fs::symlink(&s.sh, &sym).unwrap();
    let script = dir.join("script.sh");
    std::fs::write(&script, format!("#!{}\nexit 0\n", s.sh.display())).unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    // The script first: its profile must still be named by its interpreter.
    for exe in [&script, &s.sh, &hard, &sym] {
        let o = output(Command::new(exe).arg("-c").arg("exit 0"));
        assert!(o.status.success(), "{}", exe.display());
    }
    std::thread::sleep(Duration::from_millis(1500));
    let live = daemon_profiles(&s.dir.path().join("state"));
    let p = live
        .iter()
        .find(|p| p["key"] == s.key.as_str())
        .unwrap_or_else(|| panic!("no profile for the shell: {live:?}"));
    assert_eq!(p["path"], s.sh.to_str().unwrap(), "{p}");
    let paths: Vec<&str> = p["paths"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    for want in [&s.sh, &hard, &sym] {
        assert!(paths.contains(&want.to_str().unwrap()), "{paths:?}");
    }
    assert!(!paths.contains(&script.to_str().unwrap()), "{paths:?}");
    assert_eq!(p["scripts"], serde_json::json!([script.to_str().unwrap()]));
    // `profile show` finds it by any of its names and shows the same.
    let state = s.dir.path().join("state");
    for name in [&hard, &sym] {
        let shown = homeostat(
            &["profile", "show", name.to_str().unwrap(), "--json"],
            &state,
        );
        assert_eq!(shown["key"], s.key.as_str(), "{}: {shown}", name.display());
        assert_eq!(shown["scripts"], p["scripts"]);
    }
    unsafe { libc::kill(d.id() as i32, libc::SIGTERM) };
    assert!(d.wait().unwrap().success());
}

/// The cgroup v2 hierarchy's root (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on a
/// hybrid v1/v2 machine), if there is one.
fn cgroup2_root() -> Option<std::path::PathBuf> {
    ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        .iter()
        .map(std::path::PathBuf::from)
        .find(|p| p.join("cgroup.procs").exists() && p.join("cgroup.controllers").exists())
}

/// `--cgroup`: a daemon scoped to one cgroup follows only the processes in it. A
/// private shell run inside gets a profile; a copy run outside does not, and neither
/// does anything else on this busy machine.
#[test]
fn a_cgroup_scoped_daemon_watches_only_its_cgroup() {
    if !homeostat_testsupport::daemon::possible() {
        return;
    }
    let Some(root) = cgroup2_root() else {
        eprintln!("skipping: no cgroup v2 hierarchy mounted");
        return;
    };
    let cg = root.join(format!("homeostat-test-{}", std::process::id()));
    std::fs::create_dir(&cg).unwrap();
    let s = shell();
    let outside = s.dir.path().join("sh-outside");
    std::fs::copy(&s.sh, &outside).unwrap();
    let ev = s.dir.path().join("ev.jsonl");
    let conf = shell_config(&s, "", false);
    let state = s.dir.path().join("state");
    let args = [
        "--duration",
        "60",
        "--cgroup",
        cg.to_str().unwrap(),
        "--config",
        conf.to_str().unwrap(),
    ];
    let (mut d, rx) = daemon(&state, &ev, &args);
    if ready(&mut d, &rx).is_none() {
        let _ = std::fs::remove_dir(&cg);
        return;
    }
    let inside = format!(
        "echo $$ > {}/cgroup.procs && exec {} -c 'exit 0'",
        cg.display(),
        s.sh.display()
    );
    assert!(output(Command::new("/bin/sh").arg("-c").arg(&inside))
        .status
        .success());
    assert!(output(Command::new(&outside).arg("-c").arg("exit 0"))
        .status
        .success());
    std::thread::sleep(Duration::from_millis(1500));
    let keys: Vec<String> = daemon_profiles(&state)
        .iter()
        .map(|p| p["key"].as_str().unwrap().to_string())
        .collect();
    unsafe { libc::kill(d.id() as i32, libc::SIGTERM) };
    assert!(d.wait().unwrap().success());
    let _ = std::fs::remove_dir(&cg);
    assert_eq!(keys, vec![s.key.clone()], "only the shell run inside");
}

/// `profile learn-from`: a profile restricted to one cgroup's processes (then to one
/// user's) is not trained by the same program run outside it (or by another user).
#[test]
fn a_profile_learns_only_from_its_cgroup_or_user() {
    if !homeostat_testsupport::daemon::possible() {
        return;
    }
    let Some(root) = cgroup2_root() else {
        eprintln!("skipping: no cgroup v2 hierarchy mounted");
        return;
    };
    let cg = root.join(format!("homeostat-learn-{}", std::process::id()));
    std::fs::create_dir(&cg).unwrap();
    let s = shell();
    let ev = s.dir.path().join("ev.jsonl");
    let conf = shell_config(&s, "", false);
    let Some((mut d, _rx)) = shell_daemon(&s, &conf, &ev) else {
        let _ = std::fs::remove_dir(&cg);
        return;
    };
    let state = s.dir.path().join("state");
    let run_inside = || {
        let cmd = format!(
            "echo $$ > {}/cgroup.procs && exec {} -c '{}'",
            cg.display(),
            s.sh.display(),
            s.trained
        );
        assert!(output(Command::new("/bin/sh").arg("-c").arg(&cmd))
            .status
            .success());
    };
    let run_outside = || {
        for _ in 0..3 {
            assert!(output(Command::new(&s.sh).arg("-c").arg(&s.trained))
                .status
                .success());
        }
    };
    let trained = || {
        std::thread::sleep(Duration::from_millis(1500));
        daemon_profiles(&state)
            .iter()
            .find(|p| p["key"] == s.key.as_str())
            .map(|p| p["train_count"].as_u64().unwrap())
            .expect("no profile for the shell")
    };
    run_inside();
    let first = trained();
    assert!(first > 0);
    let set = |args: &[&str]| {
        let mut a = vec!["profile", "learn-from"];
        a.extend(args);
        a.push(s.key.as_str());
        let o = output(
            Command::new(env!("CARGO_BIN_EXE_homeostat"))
                .args(&a)
                .arg("--state-dir")
                .arg(&state),
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    set(&["--cgroup", cg.to_str().unwrap()]);
    run_outside();
    let after_outside = trained();
    assert_eq!(
        after_outside, first,
        "trained by processes outside its cgroup"
    );
    run_inside();
    let after_inside = trained();
    assert!(after_inside > first, "not trained from inside its cgroup");
    // Only another user's processes: this test's (root) no longer teach it.
    set(&["--uid", "65534"]);
    run_inside();
    run_outside();
    assert_eq!(
        trained(),
        after_inside,
        "trained by a user it does not learn from"
    );
    let shown = daemon_profiles(&state)
        .into_iter()
        .find(|p| p["key"] == s.key.as_str())
        .unwrap();
    assert_eq!(shown["learn_uid"], 65534);
    unsafe { libc::kill(d.id() as i32, libc::SIGTERM) };
    assert!(d.wait().unwrap().success());
    let _ = std::fs::remove_dir(&cg);
}

/// A `homeostat run` profile records its file's birth time; the daemon's kernel side
/// tells files apart by inode generation, which a run profile does not know. A run
/// profile of a deleted file whose inode number a later program now has must not
/// seed the daemon's profile of that program (it would adopt the program's generation
/// at its first exec and judge it by another program's calls).
#[test]
fn a_run_profile_of_an_earlier_file_with_the_same_inode_number_does_not_seed_the_daemon() {
    if !homeostat_testsupport::daemon::possible() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let prog = dir.path().join("prog");
    std::fs::copy("/usr/bin/true", &prog).unwrap();
    let born = |p: &Path| std::fs::metadata(p).unwrap().created().ok();
    if born(&prog).is_none() {
        eprintln!("skipping: the file system reports no birth time");
        return;
    }
    let state = dir.path().join("state");
    learn_under_run(&state, &prog, &[]);
    let st = Command::new(env!("CARGO_BIN_EXE_homeostat"))
        .args(["profile", "normalize", "prog", "--state-dir"])
        .arg(&state)
        .status()
        .unwrap();
    assert!(st.success());
    let m = std::fs::metadata(&prog).unwrap();
    let key = format!("{:x}-{:x}", m.dev(), m.ino());
    // echo installed in its place, under the same inode number.
    if !reinstall_at_inode(&prog, "/usr/bin/echo", m.ino()) {
        eprintln!("skipping: the file system gave no inode number twice");
        return;
    }
    let ev = dir.path().join("ev.jsonl");
    let (mut d, rx) = daemon(&state, &ev, &["--duration", "3", "--detect"]);
    if ready(&mut d, &rx).is_none() {
        return;
    }
    for _ in 0..3 {
        let out = Command::new(&prog).arg("hi").output().unwrap();
        assert!(out.status.success());
    }
    assert!(d.wait().unwrap().success());
    let evs = events(&ev);
    let mine: Vec<&Value> = evs
        .iter()
        .filter(|e| e["profile"] == key.as_str())
        .collect();
    assert!(
        !mine
            .iter()
            .any(|e| e["event"] == "profile_loaded" || e["event"] == "anomaly"),
        "{mine:?}"
    );
}

/// Three runs of `prog args` under `homeostat run --learn` with state directory `state`.
fn learn_under_run(state: &Path, prog: &Path, args: &[&str]) {
    for _ in 0..3 {
        let st = Command::new(env!("CARGO_BIN_EXE_homeostat"))
            .args(["run", "--quiet", "--learn", "--state-dir"])
            .arg(state)
            .arg("--")
            .arg(prog)
            .args(args)
            .status()
            .unwrap();
        assert!(st.success());
    }
}

/// Installs a copy of `src` at `prog` (deleted first) until the file system gives it
/// inode number `ino` again; false if it did not within 20 tries.
fn reinstall_at_inode(prog: &Path, src: &str, ino: u64) -> bool {
    for _ in 0..20 {
        std::fs::remove_file(prog).unwrap();
        std::fs::copy(src, prog).unwrap();
        if std::fs::metadata(prog).unwrap().ino() == ino {
            return true;
        }
    }
    false
}

/// The other side of the test above: a daemon profile of a deleted file must not keep
/// `homeostat run`'s profile of the later file that reuses its inode number from
/// seeding the daemon. At start, a daemon file written before that file was born is
/// not loaded; one written after (so not told apart at start) is replaced at the new
/// file's first exec (another inode generation), and run's profile takes its place.
#[test]
fn a_daemon_profile_of_an_earlier_file_gives_way_to_run_s_profile_of_the_later_one() {
    if !homeostat_testsupport::daemon::possible() {
        return;
    }
    const REPLACED: &str = "executable replaced (its inode number reused by another file)";
    let dir = tempfile::tempdir().unwrap();
    let prog = dir.path().join("prog");
    std::fs::copy("/usr/bin/true", &prog).unwrap();
    if std::fs::metadata(&prog).unwrap().created().is_err() {
        eprintln!("skipping: the file system reports no birth time");
        return;
    }
    let ino = std::fs::metadata(&prog).unwrap().ino();
    let key = key_of(&prog);
    let state = dir.path().join("state");
    let daemon_file = state.join("daemon").join(format!("{key}.json"));
    let run_prog = |args: &[&str]| {
        for _ in 0..3 {
            let st = Command::new(&prog).args(args).output().unwrap().status;
            assert!(st.success());
        }
    };
    let daemon_for = |ev: &Path, secs: &str, during: &dyn Fn()| {
        let (mut d, rx) = daemon(&state, ev, &["--duration", secs, "--detect"]);
        ready(&mut d, &rx)?;
        during();
        assert!(d.wait().unwrap().success());
        Some(
            events(ev)
                .into_iter()
                .filter(|e| e["profile"] == key.as_str())
                .collect::<Vec<Value>>(),
        )
    };

    // The daemon learns the first file (a copy of true).
    if daemon_for(&dir.path().join("ev1.jsonl"), "2", &|| run_prog(&[])).is_none() {
        return;
    }
    let old = std::fs::read(&daemon_file).expect("the daemon saved its profile");
    let old_igen = serde_json::from_slice::<Value>(&old).unwrap()["igen"].clone();

    // echo installed under the same inode number, learnt by homeostat run.
    if !reinstall_at_inode(&prog, "/usr/bin/echo", ino) {
        eprintln!("skipping: the file system gave no inode number twice");
        return;
    }
    learn_under_run(&state, &prog, &["hi"]);

    // At start: the daemon file predates echo, so run's profile seeds the daemon.
    let mine = daemon_for(&dir.path().join("ev2.jsonl"), "2", &|| {}).unwrap();
    let loaded: Vec<&Value> = mine
        .iter()
        .filter(|e| e["event"] == "profile_loaded")
        .collect();
    assert!(
        loaded.len() == 1 && loaded[0]["from"] == "homeostat run",
        "{mine:?}"
    );

    // A daemon file of the first program written after echo was born: loaded, then
    // replaced at echo's exec, by run's profile.
    if old_igen == 0 {
        eprintln!("skipping the exec half: the file system gives no inode generation");
        return;
    }
    std::fs::write(&daemon_file, &old).unwrap();
    let mine = daemon_for(&dir.path().join("ev3.jsonl"), "3", &|| run_prog(&["hi"])).unwrap();
    let seq: Vec<(String, String)> = mine
        .iter()
        .filter(|e| e["event"] == "profile_loaded" || e["event"] == "profile_evicted")
        .map(|e| {
            let why = if e["event"] == "profile_loaded" {
                &e["from"]
            } else {
                &e["reason"]
            };
            (e["event"].as_str().unwrap().to_string(), why.to_string())
        })
        .collect();
    let want = [
        ("profile_loaded", "\"daemon\""),
        ("profile_evicted", &*format!("{REPLACED:?}")),
        ("profile_loaded", "\"homeostat run\""),
    ];
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    assert_eq!(seq, want, "{mine:?}");
    assert!(
        !mine.iter().any(|e| e["event"] == "anomaly"),
        "echo judged by another profile: {mine:?}"
    );
}
