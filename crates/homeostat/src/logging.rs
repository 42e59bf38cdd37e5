//! One way to report, for every command: `tracing`. Libraries log warnings and notes
//! through it; the CLI picks how they look.
//!
//! - Commands that run in a terminal (run, attach, profile, the demo...) print
//!   `homeostat: warning: ...` and `homeostat: ...` lines, as they always have.
//! - The daemon prints timestamped, levelled lines (the journal adds its own
//!   timestamps under systemd; a terminal gets them here).
//!
//! Errors that end a command are not logged: `main` prints them as one line.

use std::fmt;
use std::io::IsTerminal;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// `homeostat: [warning: ]message`.
struct Plain;

impl<S, N> FormatEvent<S, N> for Plain
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        w.write_str("homeostat: ")?;
        match *event.metadata().level() {
            Level::ERROR => w.write_str("error: ")?,
            Level::WARN => w.write_str("warning: ")?,
            _ => {}
        }
        ctx.field_format().format_fields(w.by_ref(), event)?;
        writeln!(w)
    }
}

/// Logging for the interactive commands.
pub fn init_plain() {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(Level::INFO)
        .event_format(Plain)
        .try_init();
}

/// Logging for the daemon: timestamps and levels.
pub fn init_daemon() {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .with_max_level(Level::INFO)
        .try_init();
}
