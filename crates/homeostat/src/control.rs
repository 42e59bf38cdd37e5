//! The control channel of a running monitor: a Unix socket in the state directory,
//! `run/<pid>.sock`, owner-only (the directory is 0700 and the socket 0600), speaking
//! one JSON request line and one JSON reply line per connection.
//!
//! The engine belongs to the monitor loop, so a listener thread only forwards requests
//! over a channel; the loop answers them between calls ([`Server::poll`]), which keeps
//! every profile change on the one thread that owns the profiles.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::time::Duration;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A request to a running monitor.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase")]
pub enum Request {
    /// The monitored tasks.
    Ps,
    /// Save every profile now (so admin commands see the live state on disk).
    Save,
    /// Counters (the daemon; a `homeostat run` monitor answers an error).
    Status,
    /// The daemon's profiles (a `homeostat run` monitor answers an error).
    Profiles,
    /// Profile administration, by profile key (`<dev>-<ino>`).
    Normalize { key: String },
    /// Back to training.
    Sensitize { key: String },
    /// Forget the training data.
    Tolerize { key: String },
    /// Forget the profile.
    Reset { key: String },
}

/// The directory of control sockets.
pub fn run_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("run")
}

/// The serving side, owned by the monitor loop.
pub struct Server {
    path: PathBuf,
    rx: Receiver<(Request, Sender<Value>)>,
}

impl Server {
    /// Binds `run/<pid>.sock` and starts the listener thread.
    pub fn start(state_dir: &Path) -> Result<Server> {
        let dir = run_dir(state_dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("securing {}", dir.display()))?;
        let path = dir.join(format!("{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let listener =
            UnixListener::bind(&path).with_context(|| format!("binding {}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("securing {}", path.display()))?;
        let (tx, rx) = channel();
        std::thread::Builder::new()
            .name("homeostat-control".into())
            .spawn(move || {
                for conn in listener.incoming().flatten() {
                    let _ = serve(conn, &tx);
                }
            })
            .context("starting the control thread")?;
        Ok(Server { path, rx })
    }

    /// Answers pending requests with `handle`; never blocks.
    pub fn poll(&self, mut handle: impl FnMut(Request) -> Value) {
        while let Ok((req, reply)) = self.rx.try_recv() {
            let _ = reply.send(handle(req));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn serve(conn: UnixStream, tx: &Sender<(Request, Sender<Value>)>) -> Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut line = String::new();
    BufReader::new(&conn).read_line(&mut line)?;
    let reply = match serde_json::from_str::<Request>(&line) {
        Ok(req) => {
            let (rtx, rrx) = channel();
            tx.send((req, rtx))?;
            rrx.recv_timeout(Duration::from_secs(5))
                .unwrap_or_else(|_| serde_json::json!({"error": "monitor busy"}))
        }
        Err(e) => serde_json::json!({ "error": format!("bad request: {e}") }),
    };
    let mut w = &conn;
    serde_json::to_writer(&mut w, &reply)?;
    w.write_all(b"\n")?;
    Ok(())
}

/// Sends `req` to every running monitor; returns (monitor pid, reply) pairs. Sockets of
/// monitors that died are removed.
pub fn broadcast(state_dir: &Path, req: &Request) -> Vec<(u32, Value)> {
    let Ok(entries) = std::fs::read_dir(run_dir(state_dir)) else {
        return vec![];
    };
    let mut out = vec![];
    for e in entries.flatten() {
        let path = e.path();
        let Some(pid) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".sock"))
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        match ask(&path, req) {
            Ok(v) => out.push((pid, v)),
            Err(_) if !Path::new(&format!("/proc/{pid}")).exists() => {
                let _ = std::fs::remove_file(&path);
            }
            Err(_) => {}
        }
    }
    out.sort_by_key(|(p, _)| *p);
    out
}

fn ask(path: &Path, req: &Request) -> Result<Value> {
    let conn = UnixStream::connect(path)?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut w = &conn;
    serde_json::to_writer(&mut w, req)?;
    w.write_all(b"\n")?;
    let mut line = String::new();
    BufReader::new(&conn).read_line(&mut line)?;
    Ok(serde_json::from_str(&line)?)
}
