//! `homeostat demo --daemon`: the same story as `homeostat demo`, told by the
//! system-wide daemon. The note service is started directly, like any program on the
//! machine; `homeostat daemon` (a child of the demo, with a private state directory)
//! learns it from the kernel until its profile is normal, then the exploit session is
//! stopped by the kernel at its first anomaly, taken over, delayed, and its shell's
//! execve refused. Only the service's profile responds (`[modes]`): the host is in
//! detect mode, so the demo's short normal_wait cannot make other programs respond.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use homeostat_core::ph::ExeKey;
use serde_json::Value;

use super::{exploit, normal_requests, report_answer, setup, Setup};
use crate::cli::DemoArgs;

/// The daemon child; stopped (SIGTERM, then waited for) when dropped.
struct DaemonChild(Child);

impl Drop for DaemonChild {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.0.id().to_string()).status();
        let _ = self.0.wait();
    }
}

fn events(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Runs one session of the service directly; returns (seconds, output, pid, success).
fn session(
    svc: &Path,
    data: &Path,
    work: &Path,
    name: &str,
    requests: &str,
) -> Result<(f64, String, u32, bool)> {
    let req = work.join(format!("{name}.req"));
    let out = work.join(format!("{name}.out"));
    std::fs::write(&req, requests)?;
    let t = Instant::now();
    let mut child = Command::new(svc)
        .args([data, &req, &out])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", svc.display()))?;
    let pid = child.id();
    let st = child.wait()?;
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    Ok((t.elapsed().as_secs_f64(), text, pid, st.success()))
}

fn wait_ready(rx: &Receiver<String>, child: &mut Child) -> Result<()> {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(30) {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(l) if l.contains("daemon: watching") => return Ok(()),
            Ok(l) if l.contains("error") => bail!("the daemon did not start: {l}"),
            Ok(_) => {}
            Err(_) => {
                if let Some(st) = child.try_wait()? {
                    bail!("the daemon exited ({st}) before it was ready");
                }
            }
        }
    }
    bail!("the daemon was not ready after 30 s")
}

pub fn run(a: DemoArgs) -> Result<()> {
    let started = Instant::now();
    let Setup {
        svc,
        tmp,
        state_dir,
        data,
    } = setup(&a)?;
    let m = std::fs::metadata(&svc)?;
    let key = ExeKey {
        dev: m.dev(),
        ino: m.ino(),
    }
    .to_string();
    let conf = tmp.path().join("ph.toml");
    std::fs::write(
        &conf,
        format!(
            "[ph]\nmode = \"detect\"\ndelay_factor_ms = 1.0\nmax_delay_ms = 100.0\n\n[modes]\n{:?} = \"enforce\"\n",
            svc.display().to_string()
        ),
    )?;
    let ev = tmp.path().join("events.jsonl");
    println!(
        "homeostat demo --daemon: system-wide pH (eBPF) protecting {}",
        svc.display()
    );
    println!("settings: host mode detect, the service enforce; normal_wait 1 s, delay 1 ms x 2^LFC capped at 100 ms, execve refused at LFC >= 10");
    println!("(pH's own defaults: normal_wait 7 days, delays 4 ms x 2^LFC; shortened so the demo takes seconds)\n");

    let me = std::env::current_exe()?;
    let mut child = Command::new(me)
        .arg("daemon")
        .arg("--state-dir")
        .arg(&state_dir)
        .arg("--config")
        .arg(&conf)
        .arg("--events")
        .arg(&ev)
        .args(["--normal-wait", "1", "--quiet"])
        .stderr(Stdio::piped())
        .spawn()
        .context("starting homeostat daemon")?;
    let (tx, rx) = channel();
    let err = child.stderr.take().expect("piped");
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    wait_ready(&rx, &mut child)?;
    let daemon = DaemonChild(child);
    println!("0. homeostat daemon started (pid {}): every program on this machine is followed from now on\n", daemon.0.id());

    let ours = |e: &Value| e["profile"] == key.as_str();
    println!("1. learning: normal client sessions, the service started directly");
    let mut normal_secs = vec![];
    let mut i = 0;
    loop {
        if i >= 60 {
            bail!("the service's profile did not become normal in {i} sessions");
        }
        let normal = events(&ev)
            .iter()
            .any(|e| ours(e) && e["event"] == "state_change" && e["to"] == "normal");
        if i >= a.sessions && normal {
            break;
        }
        let (secs, _, _, ok) = session(
            &svc,
            &data,
            tmp.path(),
            &format!("normal{i}"),
            &normal_requests(i),
        )?;
        if !ok {
            bail!("normal session {i} failed");
        }
        normal_secs.push(secs);
        i += 1;
        // The daemon samples the kernel's counters every second.
        std::thread::sleep(Duration::from_millis(150));
    }
    for e in events(&ev)
        .iter()
        .filter(|e| ours(e) && e["event"] == "state_change")
    {
        println!(
            "   profile {}: {} -> {} ({})",
            key,
            e["from"].as_str().unwrap_or("?"),
            e["to"].as_str().unwrap_or("?"),
            e["reason"].as_str().unwrap_or("?")
        );
    }
    println!("   normal after {i} sessions\n");

    println!("2. a normal session against the normal profile");
    let (secs, _, pid, ok) = session(&svc, &data, tmp.path(), "check", &normal_requests(1))?;
    std::thread::sleep(Duration::from_millis(300));
    let n = events(&ev)
        .iter()
        .filter(|e| e["event"] == "anomaly" && e["pid"] == pid)
        .count();
    println!(
        "   {} in {secs:.2} s, {n} anomalous calls\n",
        if ok { "ok" } else { "failed" }
    );

    let attack = exploit();
    let (secs, out, pid, _) = session(&svc, &data, tmp.path(), "attack", &attack)?;
    std::thread::sleep(Duration::from_millis(500));
    let evs = events(&ev);
    let mine: Vec<&Value> = evs
        .iter()
        .filter(|e| e["pid"] == pid || (ours(e) && e["event"] != "profile_loaded"))
        .collect();
    let anomalies = mine
        .iter()
        .filter(|e| e["event"] == "anomaly" && e["pid"] == pid)
        .count();
    let max_lfc = mine
        .iter()
        .filter_map(|e| e["lfc"].as_u64())
        .max()
        .unwrap_or(0);
    for e in mine.iter().filter(|e| e["pid"] == pid).take(6) {
        if e["event"] == "anomaly" {
            println!(
                "   anomaly: pid {} {:<12} missing pairs {} LFC {:>2}{}",
                e["pid"],
                e["syscall"].as_str().unwrap_or("?"),
                e["misses"],
                e["lfc"],
                if e["action"] == "stop" {
                    " -> STOPPED by the kernel (SIGSTOP), handed to the daemon"
                } else {
                    ""
                }
            );
        }
    }
    for e in &mine {
        match e["event"].as_str() {
            Some("delay_start") => println!(
                "   pid {}: taken over with ptrace, delays start: {:.0} ms before {} (LFC {})",
                e["pid"],
                e["delay_ms"].as_f64().unwrap_or(0.0),
                e["syscall"].as_str().unwrap_or("?"),
                e["lfc"]
            ),
            Some("exec_refused") => println!(
                "   pid {}: execve REFUSED (EPERM) at LFC {}",
                e["pid"], e["lfc"]
            ),
            Some("delay_stop") => println!(
                "   pid {}: let go ({}), {} calls delayed, {} execve refused",
                e["pid"],
                e["why"].as_str().unwrap_or("?"),
                e["delays"],
                e["exec_refused"]
            ),
            _ => {}
        }
    }
    let refused = mine.iter().filter(|e| e["event"] == "exec_refused").count();
    let leaked = out.contains("root:") || out.contains("uid=");
    println!(
        "   {anomalies} anomalous calls of the service, highest LFC {max_lfc}, {refused} execve refused; session took {secs:.2} s (normal: {:.2} s)",
        normal_secs.iter().sum::<f64>() / normal_secs.len().max(1) as f64
    );
    report_answer(&out, leaked);
    drop(daemon);
    println!(
        "\ndaemon stopped; done in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    if refused == 0 || leaked {
        bail!("the exploit was not stopped");
    }
    Ok(())
}
