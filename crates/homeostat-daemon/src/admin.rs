//! The daemon's side of the control channel (`homeostat ps`, `status`, `profile ...`):
//! each request answered with its typed reply (`homeostat_monitor::control`).

use homeostat_core::ph::{ExeKey, ProfileState};
use homeostat_ebpf::Kernel;
use homeostat_monitor::control::{
    AdminReply, ArgumentLosses, Evictions, Losses, ProfileCounts, ProfileEntry, ProfilesReply,
    ProgRunTime, PsReply, Request, Response, SaveReply, StatusReply,
};
use homeostat_monitor::daemon_profile::container_id;
use homeostat_monitor::TaskInfo;

use crate::daemon::Daemon;

impl Daemon {
    /// Answers a control request (`homeostat ps`, `status`, `profile ...`).
    pub(crate) fn answer(&mut self, kernel: &Kernel, req: Request) -> Response {
        let done = Response::Admin(AdminReply {
            ok: true,
            state: None,
        });
        let key = match &req {
            Request::Ps => {
                return Response::Ps(PsReply {
                    tasks: self.tasks(kernel),
                })
            }
            Request::Status => {
                let mut s = self.status();
                // The direct per-call cost (docs/ebpf.md), when the kernel counts it.
                s.bpf_run_time = homeostat_ebpf::bpf_stats_enabled().then(|| {
                    kernel
                        .prog_stats()
                        .into_iter()
                        .map(|p| ProgRunTime {
                            name: p.name,
                            run_cnt: p.run_cnt,
                            run_time_ns: p.run_time_ns,
                        })
                        .collect()
                });
                s.floor = kernel.at_floor();
                return Response::Status(Box::new(s));
            }
            Request::Save => {
                let (saved, failed) = self.save(kernel);
                return Response::Save(SaveReply {
                    ok: failed == 0,
                    errors: None,
                    saved: Some(saved),
                });
            }
            Request::Profiles => return Response::Profiles(self.profile_list()),
            Request::Hook { floor } => {
                return match kernel.set_floor(*floor) {
                    Ok(()) => done,
                    Err(e) => Response::error(e.to_string()),
                }
            }
            Request::Normalize { key }
            | Request::Sensitize { key }
            | Request::Tolerize { key }
            | Request::Reset { key }
            | Request::LearnFrom { key, .. } => match self.resolve(key) {
                Ok(k) => k,
                Err(e) => return e,
            },
        };
        match req {
            Request::Normalize { .. } => {
                self.set_state(kernel, key, ProfileState::Normal, "normalized")
            }
            Request::Sensitize { .. } => {
                if let Some(p) = self.profiles.get_mut(&key) {
                    p.wipe_training("sensitized");
                }
                self.set_state(kernel, key, ProfileState::Training, "sensitized");
            }
            Request::Tolerize { .. } => {
                if let Some(p) = self.profiles.get_mut(&key) {
                    p.wipe_training("tolerized");
                }
            }
            Request::Reset { .. } => {
                if let Err(e) = kernel.remove_profile(key) {
                    return Response::error(e.to_string());
                }
                self.profiles.remove(&key);
                self.limits_forget(kernel, key);
                crate::remove_profile_files(&self.dir, key);
                return done;
            }
            Request::LearnFrom { uid, cgroup, .. } => {
                if let Some(c) = &cgroup {
                    if let Err(e) = crate::main_loop::cgroup_id(std::path::Path::new(c)) {
                        return Response::error(format!("{e:#}"));
                    }
                }
                if let Some(p) = self.profiles.get_mut(&key) {
                    p.learn_uid = uid;
                    p.learn_cgroup = cgroup.as_deref().map(std::sync::Arc::from);
                    p.dirty = true;
                }
                if let Err(e) = self.apply_learn_from(kernel, key) {
                    return Response::error(format!("{e:#}"));
                }
            }
            _ => unreachable!("answered above"),
        }
        self.save(kernel);
        done
    }

    /// Tells the kernel which tasks a profile learns from (its `learn_uid`,
    /// `learn_cgroup`). A cgroup that no longer exists matches no task (nobody
    /// teaches the profile until the filter is changed), said once here.
    pub(crate) fn apply_learn_from(&self, kernel: &Kernel, key: ExeKey) -> anyhow::Result<()> {
        let Some(p) = self.profiles.get(&key) else {
            return Ok(());
        };
        let cgroup = p.learn_cgroup.as_deref().map(|c| {
            crate::main_loop::cgroup_id(std::path::Path::new(c)).unwrap_or_else(|e| {
                tracing::warn!("profile {key}: learns from nobody: {e:#}");
                0
            })
        });
        kernel.set_learn_from(key, p.learn_uid, cgroup)?;
        Ok(())
    }

    /// The profile an admin request names, or the error reply.
    pub(crate) fn resolve(&self, key: &str) -> Result<ExeKey, Response> {
        match key.parse::<ExeKey>() {
            Ok(k) if self.profiles.contains_key(&k) => Ok(k),
            Ok(_) => Err(Response::error("no such profile in the daemon")),
            Err(e) => Err(Response::error(e)),
        }
    }

    /// Every profile, for `homeostat profile list`.
    pub(crate) fn profile_list(&self) -> ProfilesReply {
        let now = crate::now_ns();
        let profiles = self
            .profiles
            .iter()
            .map(|(k, p)| ProfileEntry {
                key: k.to_string(),
                path: p.path.to_string(),
                state: p.state,
                train_count: p.train_count,
                anomalies: p.anomalies,
                paths: p.paths.iter().map(|s| s.to_string()).collect(),
                scripts: p.scripts.iter().map(|s| s.to_string()).collect(),
                progress: p.progress(now, &self.config),
                learn_uid: p.learn_uid,
                learn_cgroup: p.learn_cgroup.as_deref().map(str::to_string),
                cgroups: p
                    .cgroups
                    .iter()
                    .map(|c| match container_id(c) {
                        Some(id) => format!("{c} (container {id})"),
                        None => c.to_string(),
                    })
                    .collect(),
            })
            .collect();
        ProfilesReply {
            daemon: true,
            profiles,
        }
    }

    pub(crate) fn status(&self) -> StatusReply {
        let secs = self.started.elapsed().as_secs_f64().max(1e-9);
        let c = &self.counts;
        StatusReply {
            daemon: true,
            pid: std::process::id(),
            uptime_s: secs,
            mode: self.config.mode,
            respond: self.respond,
            events: c.events_total,
            events_per_s: c.events_total as f64 / secs,
            anomalies: c.anomalies_total,
            responses: c.responses_total,
            under_response: self.responders.active(),
            delays: c.delays_total,
            execve_refused: c.execve_refused_total,
            losses: Losses {
                lost_events: self.stats.lost_events,
                rows_full: self.stats.rows_full,
                tasks_full: self.stats.tasks_full,
                profiles_full: self.stats.profiles_full,
                stops_failed: self.stats.stops_failed,
            },
            profiles: ProfileCounts {
                training: c.profiles_training,
                frozen: c.profiles_frozen,
                normal: c.profiles_normal,
            },
            max_profiles: self.max_profiles,
            evicted: Evictions {
                deleted: c.evicted_deleted_total,
                lru: c.evicted_lru_total,
            },
            calls: c.calls_total,
            calls_normal: c.calls_normal_total,
            tids_taken: self.stats.tids_taken,
            general_calls: Some(self.stats.general_calls),
            bpf_run_time: None,
            floor: None,
            arguments: self.symbols.is_some().then_some(ArgumentLosses {
                overflowed: self.arg_stats.overflowed,
                map_full: self.arg_stats.map_full,
                unread: self.arg_stats.unread,
                lost_events: self.arg_stats.lost_events,
            }),
            limits: self.limits_now(),
        }
    }

    /// Every task the kernel follows under a profile, from /proc and the kernel's task
    /// states, in `homeostat ps`'s form.
    pub(crate) fn tasks(&self, kernel: &Kernel) -> Vec<TaskInfo> {
        let active = self.responders.active();
        let mut out = vec![];
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return out;
        };
        for pid in entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        {
            let Ok(tids) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
                continue;
            };
            for tid in tids
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            {
                let Ok(Some(t)) = kernel.task(tid) else {
                    continue;
                };
                let Some(p) = self.profiles.get(&t.exe) else {
                    continue;
                };
                let under = active.contains(&pid);
                out.push(TaskInfo {
                    pid: pid as i32,
                    tid: tid as i32,
                    exe: p.path.to_string(),
                    profile: t.exe.to_string(),
                    state: p.state,
                    lfc: t.lfc,
                    delay_ms: if under {
                        self.config.delay_ns(t.lfc) as f64 / 1e6
                    } else {
                        0.0
                    },
                    anomalies: p.anomalies,
                    calls: p.train_count,
                    response: Some(under),
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use homeostat_core::ph::{Mode, PhConfig};
    use homeostat_monitor::control::{ErrorReply, Progress, Reply};

    use super::*;
    use crate::lifecycle::Prof;

    fn daemon() -> Daemon {
        let mut d = Daemon::new(
            PhConfig::default(),
            Default::default(),
            std::env::temp_dir(),
            None,
            true,
            false,
        );
        let mut p = Prof::new(Arc::from("/usr/bin/x"));
        p.state = ProfileState::Normal;
        p.train_count = 12;
        p.anomalies = 2;
        d.profiles.insert(ExeKey { dev: 1, ino: 0x2a }, p);
        d
    }

    /// A reply as a client reads it off the socket.
    fn wire<T: serde::de::DeserializeOwned>(r: &Response) -> Reply<T> {
        serde_json::from_str(&serde_json::to_string(r).unwrap()).unwrap()
    }

    #[test]
    fn admin_requests_name_a_profile_of_the_daemon() {
        let d = daemon();
        assert_eq!(d.resolve("1-2a").unwrap(), ExeKey { dev: 1, ino: 0x2a });
        let error = |r: Result<ExeKey, Response>| match wire::<AdminReply>(&r.unwrap_err()) {
            Reply::Error(ErrorReply { error }) => error,
            Reply::Ok(r) => panic!("not an error: {r:?}"),
        };
        assert_eq!(error(d.resolve("1-2b")), "no such profile in the daemon");
        assert!(!error(d.resolve("not a key")).is_empty());
    }

    #[test]
    fn profile_list_and_status_cross_the_wire() {
        let mut d = daemon();
        d.counts.events_total = 40;
        d.counts.anomalies_total = 3;
        d.counts.profiles_normal = 1;
        d.stats.rows_full = 5;
        let list = wire::<ProfilesReply>(&Response::Profiles(d.profile_list()))
            .ok()
            .unwrap();
        assert!(list.daemon);
        assert_eq!(
            list.profiles,
            vec![ProfileEntry {
                key: "1-2a".into(),
                path: "/usr/bin/x".into(),
                state: ProfileState::Normal,
                train_count: 12,
                anomalies: 2,
                paths: vec!["/usr/bin/x".into()],
                scripts: vec![],
                progress: Progress {
                    calls_since_new_pair: 0,
                    calls_to_freeze: None,
                    normal_in_s: None,
                    last_reset: None,
                },
                learn_uid: None,
                learn_cgroup: None,
                cgroups: vec![],
            }]
        );
        let s = wire::<StatusReply>(&Response::Status(Box::new(d.status())))
            .ok()
            .unwrap();
        assert!(s.daemon && !s.respond);
        assert_eq!(s.pid, std::process::id());
        assert_eq!((s.events, s.anomalies), (40, 3));
        assert_eq!(s.mode, Mode::Enforce);
        assert_eq!(s.losses.rows_full, 5);
        assert_eq!(s.profiles.normal, 1);
        assert!(s.events_per_s > 0.0 && s.under_response.is_empty());
    }
}
