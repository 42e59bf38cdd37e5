//! The pH engine as a consumer of the monitor loop ([`crate::monitor_loop`]): each call
//! goes to the [`Engine`], profiles are saved now and then, and the control channel is
//! answered between calls. `homeostat run`, `attach` and the demo all use it.

use std::path::Path;
use std::time::{Duration, Instant};

use homeostat_core::ph::{ExeKey, Verdict};
use tracing::warn;

use crate::control::{AdminReply, PsReply, Request, Response, SaveReply, Server, NOT_A_DAEMON};
use crate::engine::{Call, Engine};
use crate::monitor_loop::{CallEvent, Consumer};

/// How often a running monitor saves its changed profiles.
const SAVE_EVERY: Duration = Duration::from_secs(30);

/// Feeds calls to the pH engine, saves profiles now and then, answers the control
/// channel.
pub struct PhConsumer {
    /// The engine the calls go to.
    pub engine: Engine,
    last_save: Instant,
    control: Option<Server>,
}

impl PhConsumer {
    /// A consumer without a control channel.
    pub fn new(engine: Engine) -> Self {
        PhConsumer {
            engine,
            last_save: Instant::now(),
            control: None,
        }
    }

    /// Serves `homeostat ps` and profile commands from the state directory's socket.
    pub fn serve_control(&mut self, state_dir: &Path) {
        match Server::start(state_dir) {
            Ok(s) => self.control = Some(s),
            Err(e) => warn!("no control channel: {e:#}"),
        }
    }

    /// Saves changed profiles, reporting failures (the program goes on).
    pub fn save(&mut self) {
        for e in self.engine.save() {
            warn!("cannot save profile: {e}");
        }
        self.last_save = Instant::now();
    }
}

impl Consumer for PhConsumer {
    fn call(&mut self, ev: &CallEvent) -> Verdict {
        let path = ev.path.to_string_lossy();
        self.engine.on_syscall(
            &Call {
                tid: ev.tid,
                pid: ev.pid,
                exe: ev.exe,
                born: ev.born,
                path: &path,
                arch: ev.arch,
                nr: ev.nr,
                parent: ev.parent,
                arg: ev.captured.arg.as_ref(),
            },
            crate::now_ns(),
        )
    }

    fn exit(&mut self, pid: i32, tid: i32, group: bool) {
        if group {
            self.engine.on_process_exit(pid, crate::now_ns());
        } else {
            self.engine.on_task_exit(tid, crate::now_ns());
        }
    }

    fn wants_args(&self) -> bool {
        self.engine.wants_args()
    }

    fn tick(&mut self) {
        self.engine.rate_releases(crate::now_ns());
        if self.last_save.elapsed() >= SAVE_EVERY {
            self.save();
        }
    }

    fn poll(&mut self) {
        let Some(server) = &self.control else {
            return;
        };
        let engine = &mut self.engine;
        server.poll(|req| answer(engine, req));
    }
}

/// Answers one control request against the live engine.
pub fn answer(engine: &mut Engine, req: Request) -> Response {
    let key = match &req {
        Request::Ps => {
            return Response::Ps(PsReply {
                tasks: engine.tasks(),
            })
        }
        Request::Status | Request::Profiles | Request::LearnFrom { .. } | Request::Hook { .. } => {
            return Response::error(format!(
                "{NOT_A_DAEMON} (homeostat run keeps its profiles in profiles/)"
            ))
        }
        Request::Save => {
            let errors: Vec<String> = engine.save().iter().map(|e| e.to_string()).collect();
            return Response::Save(SaveReply {
                ok: errors.is_empty(),
                errors: Some(errors),
                saved: None,
            });
        }
        Request::Normalize { key }
        | Request::Sensitize { key }
        | Request::Tolerize { key }
        | Request::Reset { key } => match key.parse::<ExeKey>() {
            Ok(k) => k,
            Err(e) => return Response::error(e),
        },
    };
    if let Request::Reset { .. } = req {
        return match engine.reset(key) {
            Ok(found) => Response::Admin(AdminReply {
                ok: found,
                state: None,
            }),
            Err(e) => Response::error(e.to_string()),
        };
    }
    let Some(p) = engine.profile_mut(key) else {
        return Response::Admin(AdminReply::default());
    };
    match req {
        Request::Normalize { .. } => p.normalize(&mut |_| {}),
        Request::Sensitize { .. } => p.sensitize("sensitized", &mut |_| {}),
        Request::Tolerize { .. } => p.tolerize(),
        Request::Ps
        | Request::Save
        | Request::Status
        | Request::Profiles
        | Request::LearnFrom { .. }
        | Request::Hook { .. }
        | Request::Reset { .. } => {}
    }
    p.dirty = true;
    let state = p.state;
    let errors = engine.save();
    match errors.first() {
        Some(e) => Response::error(e.to_string()),
        None => Response::Admin(AdminReply {
            ok: true,
            state: Some(state),
        }),
    }
}
