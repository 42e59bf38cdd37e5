//! The stop guard: a small process beside the daemon whose one job is that no process
//! stays stopped if the daemon dies.
//!
//! (Not to be confused with the seccomp launcher's keeper, `homeostat-seccomp`'s
//! `keeper.rs`, which answers a dead supervisor's notifications, nor with
//! `homeostat-ebpf`'s `Keeper`, the handle on the stop map this process holds.)
//!
//! The kernel side stops an anomalous process (SIGSTOP) and records it in its stop map
//! until the daemon has taken it over. If the daemon is killed in between (SIGKILL, a
//! crash, the OOM killer), nobody would resume it. So the daemon starts
//! `homeostat daemon-stop-guard --map-id N` (its own executable, [`SUBCOMMAND`]) with a
//! pipe on its standard input: the guard
//! opens the stop map by id (holding it alive past the daemon), says `ready`, and
//! waits for end of file, which comes when the daemon exits however it exits. Then it
//! sends SIGCONT to every process of the map still stopped, and exits.
//!
//! It ignores SIGINT, SIGTERM and SIGHUP and runs in its own process group, so a
//! Ctrl-C at the terminal or systemd's stop signal cannot take it down before the
//! daemon it guards.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use homeostat_ebpf::open_stopped_map;

/// The subcommand of the daemon's own executable that runs [`serve`]; the executable
/// is expected to dispatch it (the `homeostat` CLI does).
pub const SUBCOMMAND: &str = "daemon-stop-guard";

/// The daemon's handle on its stop guard: dropping it (or the daemon's death) closes
/// the pipe, and the guard resumes what is left stopped.
pub struct StopGuard {
    child: Child,
    pipe: Option<ChildStdin>,
}

impl StopGuard {
    /// Starts the stop guard for the stop map `map_id` and waits until it holds the map.
    pub fn start(map_id: u32) -> Result<StopGuard> {
        let exe = std::env::current_exe().context("locating the homeostat binary")?;
        let mut child = Command::new(exe)
            .args([SUBCOMMAND, "--map-id", &map_id.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .process_group(0)
            .spawn()
            .context("starting the stop guard")?;
        let pipe = child.stdin.take().expect("piped");
        let mut out = BufReader::new(child.stdout.take().expect("piped"));
        let mut line = String::new();
        out.read_line(&mut line)
            .context("waiting for the stop guard")?;
        if line.trim() != "ready" {
            let _ = child.kill();
            let _ = child.wait();
            return Err(anyhow!(
                "the stop guard did not start (see its message above)"
            ));
        }
        Ok(StopGuard {
            child,
            pipe: Some(pipe),
        })
    }

    /// The stop guard's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for StopGuard {
    fn drop(&mut self) {
        // Closing the pipe is the signal; then collect the guard (it exits in well
        // under a second).
        drop(self.pipe.take());
        let _ = self.child.wait();
    }
}

/// The stop guard's process (`homeostat daemon-stop-guard --map-id N`, started by the
/// daemon, not by hand). The caller has made SIGINT, SIGTERM and SIGHUP harmless: only
/// the daemon's exit ends the guard.
pub fn serve(map_id: u32) -> Result<()> {
    let stopped = open_stopped_map(map_id)?;
    println!("ready");
    std::io::stdout().flush()?;
    let mut sink = Vec::new();
    // Returns at end of file: the daemon has exited (or closed its end).
    let _ = std::io::stdin().lock().read_to_end(&mut sink);
    // The daemon's programs are detached as its descriptors close; a stop made by a
    // program still running then is caught by the second look.
    let mut resumed = vec![];
    for wait in [Duration::from_millis(50), Duration::from_millis(300)] {
        std::thread::sleep(wait);
        resumed.extend(stopped.resume_stopped());
    }
    if !resumed.is_empty() {
        tracing::info!(
            "stop guard: the daemon exited; resumed {} stopped process(es): {resumed:?}",
            resumed.len()
        );
    }
    Ok(())
}
