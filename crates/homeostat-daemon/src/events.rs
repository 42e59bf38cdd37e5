//! What the daemon hears and says: kernel events (exec, anomaly, execve refused by the
//! LSM), the response threads' reports, pH's tolerize and anomaly limits on each
//! anomaly, and the event records written to the events sink (docs/events.md) and the
//! log.

use std::os::unix::fs::MetadataExt;
use std::sync::Arc;

use homeostat_core::ph::{ExeKey, ProfileState};
use homeostat_ebpf::{Event, EventKind, Kernel};
use homeostat_monitor::sink::{describe, write_event};
use homeostat_monitor::EventRecord;
use homeostat_syscalls::Arch;
use tracing::{info, warn};

use crate::daemon::Daemon;
use crate::lifecycle::Prof;
use crate::now_ns;
use crate::respond::Report;

impl Daemon {
    /// Writes an event to the events sink and, unless quiet, its line to the log.
    pub(crate) fn emit(&mut self, r: &EventRecord) {
        if let Some(w) = self.json.as_mut() {
            write_event(w, r);
        }
        self.limit_counts.count(r.event);
        if !self.quiet {
            let line = match r.event {
                "anomaly" => Some(match r.detail.get("class").and_then(|c| c.as_str()) {
                    Some(class) => format!(
                        "{} [{}]: anomaly at {} (argument class {class} never seen; {} misses, LFC {})",
                        r.exe, r.pid, r.syscall, r.detail["misses"], r.lfc
                    ),
                    None => format!(
                        "{} [{}]: anomaly at {} ({} missing pairs, LFC {})",
                        r.exe, r.pid, r.syscall, r.detail["misses"], r.lfc
                    ),
                }),
                // One per class learnt: the events file has them.
                "new_class" => None,
                _ => describe(r),
            };
            if let Some(line) = line {
                info!("{line}");
            }
        }
    }

    /// An event about profile `key`, with the profile's path and state as known now.
    pub(crate) fn record(
        &self,
        event: &'static str,
        key: ExeKey,
        (pid, tid): (u32, u32),
        syscall: String,
        lfc: u32,
        detail: serde_json::Value,
    ) -> EventRecord {
        let p = self.profiles.get(&key);
        EventRecord {
            ts: now_ns() as f64 / 1e9,
            event,
            pid: pid as i32,
            tid: tid as i32,
            exe: p.map(|p| p.path.clone()).unwrap_or_else(|| Arc::from("?")),
            profile: key.to_string(),
            state: p.map(|p| p.state).unwrap_or(ProfileState::Training),
            syscall,
            lfc,
            action: "none",
            detail,
        }
    }

    pub(crate) fn on_event(&mut self, kernel: &Kernel, e: Event) {
        self.counts.events_total += 1;
        match e.kind {
            EventKind::Exec => self.on_exec(kernel, &e),
            EventKind::NewPairs => {}
            EventKind::NewClass => self.on_new_class(&e),
            EventKind::UnseenClass => {
                if let Some(class) = self.class_of(&e) {
                    if self.unseen.len() >= 4096 {
                        self.unseen.clear();
                    }
                    self.unseen.insert(e.tid, (e.nr, Arc::from(class.as_str())));
                }
            }
            EventKind::Throttle => self.on_throttle(kernel, &e),
            EventKind::RateCall => self.on_rate_call(&e),
            EventKind::RateOver => self.on_rate_over(kernel, &e),
            EventKind::ExecRefused => {
                self.counts.execve_refused_total += 1;
                let r = self.record(
                    "exec_refused",
                    e.exe,
                    (e.pid, e.tid),
                    "execve".into(),
                    e.lfc,
                    serde_json::json!({ "by": "lsm" }),
                );
                self.emit(&EventRecord {
                    action: "refuse_exec",
                    ..r
                });
            }
            EventKind::Anomaly => {
                self.counts.anomalies_total += 1;
                if e.stopped {
                    self.resp_keys.insert(e.pid, e.exe);
                    self.responders.start(kernel, e.pid, Some(e.tid));
                }
                let mut detail = if e.foreign {
                    // Not one of the profile's teachers: reported, not counted.
                    serde_json::json!({ "misses": e.misses, "counted": false })
                } else {
                    serde_json::json!({ "misses": e.misses })
                };
                // The kernel reports an unseen class just before its call's anomaly.
                if let Some((nr, class)) = self.unseen.remove(&e.tid) {
                    if nr == e.nr {
                        detail["class"] = serde_json::Value::from(&*class);
                    }
                }
                let r = self.record(
                    "anomaly",
                    e.exe,
                    (e.pid, e.tid),
                    Arch::X86_64.display(e.nr).into_owned(),
                    e.lfc,
                    detail,
                );
                let r = EventRecord {
                    action: if e.stopped { "stop" } else { "none" },
                    ..r
                };
                self.emit(&r);
                self.limits(kernel, &e);
            }
        }
    }

    /// The name of a class event's class (the core's, from the bytes the kernel read).
    fn class_of(&self, e: &Event) -> Option<String> {
        Some(homeostat_ebpf::class_name(e.arg.as_ref()?, &self.symbols?))
    }

    /// A class learnt in the kernel: named for the classes file and reported.
    fn on_new_class(&mut self, e: &Event) {
        let Some(class) = self.class_of(e) else {
            return;
        };
        let Ok(call) = u16::try_from(e.nr) else {
            return;
        };
        let Some(p) = self.profiles.get_mut(&e.exe) else {
            return;
        };
        // Bounded by the kernel: at most max_classes per profile.
        p.classes
            .insert((call, e.class_hash), Arc::from(class.as_str()));
        p.dirty = true;
        let r = self.record(
            "new_class",
            e.exe,
            (e.pid, e.tid),
            Arch::X86_64.display(e.nr).into_owned(),
            e.lfc,
            serde_json::json!({ "class": class }),
        );
        self.emit(&r);
    }

    /// An exec: the profile is named by the executable's own path (for a `#!` script,
    /// the interpreter's: its file is what runs), every path it is run by is kept, and
    /// a script is recorded beside its interpreter's profile.
    fn on_exec(&mut self, kernel: &Kernel, e: &Event) {
        let given = e.path.clone().unwrap_or_default();
        let own = e.interp.clone().unwrap_or_else(|| given.clone());
        // The file that runs, symbolic links resolved, while the process still runs
        // it (the same inode: it may have exec'd again or gone).
        let live = homeostat_proc::exe(e.pid as i32);
        let resolved = (live.dev == e.exe.dev && live.ino == e.exe.ino)
            .then(|| live.path.to_string_lossy().into_owned())
            .filter(|p| p.starts_with('/') && !p.ends_with(" (deleted)"));
        let own = match (&resolved, own.starts_with('/')) {
            (Some(r), false) => r.clone(),
            _ => own,
        };
        let name = resolved.clone().unwrap_or_else(|| own.clone());
        // Several execs of the new file can be flagged before the first flag is
        // handled (each checked the kernel's entry before userspace fixed it): once
        // the profile is this file's (its generation recorded), a later flag is old.
        let handled = self.profiles.get(&e.exe).is_some_and(|p| p.igen == e.igen);
        if e.replaced && !handled {
            // Another file now has this inode number: the old profile (a deleted
            // file's) must not judge it. The kernel does not follow the task until
            // the profile is replaced by an empty training one for this file.
            // Evicting removes it from the kernel; the new one is made for this file.
            if self.evict_one(kernel, e.exe, crate::evict::Why::Replaced) {
                // `homeostat run` may have learnt this very file: then its profile
                // takes the place, else an empty one does. Its birth time from the
                // process, or (gone already) from the path it was run by.
                let born = [format!("/proc/{}/exe", e.pid), given.clone(), own.clone()]
                    .iter()
                    .filter(|p| p.starts_with('/'))
                    .filter_map(|p| std::fs::metadata(p).ok())
                    .find(|m| (m.dev(), m.ino()) == (e.exe.dev, e.exe.ino))
                    .and_then(|m| homeostat_proc::birth_time(&m));
                self.seed_replaced(kernel, e.exe, born);
                if let Err(err) = kernel.set_igen(e.exe, e.igen) {
                    warn!("profile {} not replaced: {err}", e.exe);
                }
            }
        }
        let p = self
            .profiles
            .entry(e.exe)
            .or_insert_with(|| Prof::new(Arc::from(name.as_str())));
        p.last_used_ns = now_ns();
        if p.igen == 0 && e.igen != 0 {
            // Made by the kernel at this exec, or loaded without one: adopted, as the
            // kernel does.
            p.igen = e.igen;
            p.dirty = true;
        }
        let mut changed = p.saw_path(&name);
        changed |= p.saw_path(&own);
        if e.interp.is_some() && !given.is_empty() {
            let script = if given.starts_with('/') {
                given
            } else {
                std::fs::read_link(format!("/proc/{}/cwd", e.pid))
                    .map(|cwd| cwd.join(&given).to_string_lossy().into_owned())
                    .unwrap_or(given)
            };
            p.saw_script(&script);
        }
        // The cgroup of the process that ran it: a container's shows which one.
        if let Ok(cg) = std::fs::read_to_string(format!("/proc/{}/cgroup", e.pid)) {
            if let Some(path) = cg.lines().find_map(|l| l.strip_prefix("0::")) {
                if path != "/" {
                    p.saw_cgroup(path);
                }
            }
        }
        if changed && p.state == ProfileState::Normal {
            // Its mode may depend on a path, now known.
            let on = self.responds(e.exe);
            let _ = kernel.set_respond(e.exe, on);
        }
        self.throttle_mode(kernel, e.exe);
    }

    /// pH's tolerize_limit and anomaly_limit, for an anomaly event. An LFC above
    /// tolerize_limit starts a tolerized episode for the process (until its response
    /// ends): the profile's training counters are wiped (the kernel keeps one pair set,
    /// so there is no separate training data to wipe) and its anomalies stop counting
    /// toward anomaly_limit; more than anomaly_limit counted anomalies send the profile
    /// back to training, as in `homeostat run` (docs/homeostat-run.md).
    pub(crate) fn limits(&mut self, kernel: &Kernel, e: &Event) {
        if e.foreign {
            // A process the profile does not learn from changes nothing in it.
            return;
        }
        let c = &self.config;
        if e.lfc > c.tolerize_limit && self.tolerized.insert(e.pid) {
            if self.tolerized.len() > 4096 {
                // Bounded: pids of long-gone processes.
                self.tolerized.clear();
                self.tolerized.insert(e.pid);
            }
            if let Some(p) = self.profiles.get_mut(&e.exe) {
                p.wipe_training("tolerize_limit");
            }
            let r = self.record(
                "tolerized",
                e.exe,
                (e.pid, e.tid),
                Arch::X86_64.display(e.nr).into_owned(),
                e.lfc,
                serde_json::json!({}),
            );
            self.emit(&r);
        }
        if self.tolerized.contains(&e.pid) {
            return;
        }
        let limit = self.config.anomaly_limit;
        let Some(p) = self.profiles.get_mut(&e.exe) else {
            return;
        };
        p.anomalies += 1;
        p.dirty = true;
        if p.state == ProfileState::Normal && p.anomalies > limit {
            p.wipe_training("anomaly_limit");
            self.set_state(kernel, e.exe, ProfileState::Training, "anomaly_limit");
        }
    }

    /// What the response threads reported: events and counters.
    pub(crate) fn on_reports(&mut self, kernel: &Kernel) {
        for r in self.responders.reports() {
            match r {
                Report::Started => self.counts.responses_total += 1,
                Report::Delayed {
                    pid,
                    tid,
                    nr,
                    lfc,
                    delay_ns,
                } => {
                    self.counts.delays_total += 1;
                    if self.delaying.insert(pid) {
                        let key = self.key_of(pid);
                        let r = self.record(
                            "delay_start",
                            key,
                            (pid, tid),
                            Arch::X86_64.display(nr).into_owned(),
                            lfc,
                            serde_json::json!({ "delay_ms": delay_ns as f64 / 1e6 }),
                        );
                        self.emit(&EventRecord {
                            action: "delay",
                            ..r
                        });
                    }
                }
                Report::ExecRefused { pid, tid, lfc } => {
                    self.counts.execve_refused_total += 1;
                    let key = self.key_of(pid);
                    let r = self.record(
                        "exec_refused",
                        key,
                        (pid, tid),
                        "execve".into(),
                        lfc,
                        serde_json::json!({}),
                    );
                    self.emit(&EventRecord {
                        action: "refuse_exec",
                        ..r
                    });
                }
                Report::Finished {
                    pid,
                    delays,
                    refused,
                    why,
                } => {
                    self.delaying.remove(&pid);
                    self.tolerized.remove(&pid);
                    let key = self.key_of(pid);
                    let r = self.record(
                        "delay_stop",
                        key,
                        (pid, pid),
                        String::new(),
                        0,
                        serde_json::json!({ "delays": delays, "exec_refused": refused, "why": why }),
                    );
                    self.emit(&r);
                    self.resp_keys.remove(&pid);
                }
                Report::Throttled {
                    at_ns,
                    pid,
                    tid,
                    exe,
                    host,
                    delay_ns,
                    queue,
                    alarm,
                    held,
                } => self.on_throttled(
                    at_ns,
                    (pid, tid),
                    exe,
                    &host,
                    (delay_ns, queue, alarm),
                    held,
                ),
                Report::RateReleased {
                    exe,
                    kind,
                    released,
                    queue,
                } => self.on_rate_released(exe, kind, released, queue),
                Report::RateQueued {
                    pid,
                    tid,
                    exe,
                    nr,
                    kind,
                    limit,
                    delay_ns,
                    queue,
                    alarm,
                } => self.on_rate_queued(
                    (pid, tid),
                    exe,
                    (kind, limit),
                    (delay_ns, queue, alarm),
                    nr,
                ),
                Report::Failed { pid, error } => {
                    warn!("no response to {pid} (resumed): {error}");
                    let key = self.key_of(pid);
                    let r = self.record(
                        "response_failed",
                        key,
                        (pid, pid),
                        String::new(),
                        0,
                        serde_json::json!({ "error": error }),
                    );
                    self.emit(&r);
                    self.resp_keys.remove(&pid);
                }
            }
        }
        // A stop whose event was lost (full ring buffer) is found here.
        let active = self.responders.active();
        for (pid, tid, _) in kernel.stopped() {
            if !active.contains(&pid) {
                if self.respond {
                    self.responders.start(kernel, pid, Some(tid));
                } else {
                    kernel.release(pid);
                }
            }
        }
    }

    /// The profile of process `pid` as the kernel knows it (for response events).
    pub(crate) fn key_of(&self, pid: u32) -> ExeKey {
        if let Some(&k) = self.resp_keys.get(&pid) {
            return k;
        }
        let e = homeostat_proc::exe(pid as i32);
        ExeKey {
            dev: e.dev,
            ino: e.ino,
        }
    }
}
