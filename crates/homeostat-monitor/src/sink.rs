//! Where a monitor's events go: the `--events` file of JSON lines (docs/events.md) and
//! a one-line account for people. Shared by `homeostat run`, `attach`, the demo and
//! the daemon, so that every front end writes the same lines.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use crate::engine::EventRecord;

/// An open events sink.
pub type EventSink = Box<dyn Write + Send>;

/// Opens the `--events` sink: JSON lines appended to a file, `-` for standard output.
pub fn open_events(path: Option<&Path>) -> std::io::Result<Option<EventSink>> {
    Ok(match path {
        None => None,
        Some(p) if p.as_os_str() == "-" => Some(Box::new(std::io::stdout())),
        Some(p) => Some(Box::new(BufWriter::new(
            File::options()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| {
                    std::io::Error::new(
                        e.kind(),
                        format!("opening events file {}: {e}", p.display()),
                    )
                })?,
        ))),
    })
}

/// Writes one event as a JSON line and flushes it. Errors are dropped on purpose: a
/// full disk loses events, never monitoring.
pub fn write_event<T: serde::Serialize + ?Sized>(w: &mut dyn Write, r: &T) {
    let _ = serde_json::to_writer(&mut *w, r)
        .map(|_| w.write_all(b"\n"))
        .map(|_| w.flush());
}

/// A one-line human account of an event, or `None` for events too frequent to print.
pub fn describe(r: &EventRecord) -> Option<String> {
    let who = format!("{} [{}]", r.exe, r.pid);
    Some(match r.event {
        "state_change" => format!(
            "profile {} ({}): {} -> {} ({})",
            r.profile,
            r.exe,
            r.detail["from"].as_str()?,
            r.detail["to"].as_str()?,
            r.detail["reason"].as_str()?
        ),
        "delay_start" => format!(
            "{who}: anomalous (LFC {}): delaying its calls, {:.0} ms for {}",
            r.lfc,
            r.detail["delay_ms"].as_f64()?,
            r.syscall
        ),
        "delay_stop" => format!("{who}: LFC back to 0, delays stop"),
        "exec_refused" => format!("{who}: execve refused (LFC {})", r.lfc),
        "tolerized" => format!(
            "{who}: LFC {} above the tolerize limit: training data of {} wiped",
            r.lfc, r.exe
        ),
        "rate_alarm" => format!(
            "{}: {} {} calls waiting (limit {} per window)",
            r.exe,
            r.detail["queue"],
            r.detail["kind"].as_str()?,
            r.detail["limit"]
        ),
        _ => return None,
    })
}
