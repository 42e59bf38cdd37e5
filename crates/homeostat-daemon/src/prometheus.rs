//! An optional Prometheus endpoint for `homeostat daemon`, so a monitoring system can
//! watch the daemon's counters (events, anomalies, responses, kernel losses) and its
//! profiles by state without parsing the events file.
//!
//! It is off by default. When enabled it serves `GET /metrics` in the Prometheus text
//! exposition format 0.0.4 on a loopback address only: the endpoint has no
//! authentication, and what it shows (how many processes are stopped, whether the
//! kernel is losing events) is useful to an attacker, so [`MetricsServer::start`]
//! refuses any other address. A scraper on another machine goes through a local proxy
//! or an SSH tunnel.
//!
//! The daemon's loop owns the numbers and copies them into a shared [`Snapshot`]; a
//! small thread reads the latest snapshot per request. It is plain std HTTP/1.1: one
//! request per connection (`Connection: close`), with a deadline on reading the
//! request so a slow or silent client cannot hold the thread.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// The daemon's numbers at one moment, as the endpoint shows them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// Events received from the kernel.
    pub events_total: u64,
    /// Anomalous calls.
    pub anomalies_total: u64,
    /// Processes stopped and put under response.
    pub responses_total: u64,
    /// Calls delayed.
    pub delays_total: u64,
    /// execve calls refused.
    pub execve_refused_total: u64,
    /// Events the kernel could not queue (ring buffer full).
    pub lost_events_total: u64,
    /// Kernel loss counter: pair-table rows full.
    pub rows_full_total: u64,
    /// Kernel loss counter: task map full.
    pub tasks_full_total: u64,
    /// Kernel loss counter: profile map full.
    pub profiles_full_total: u64,
    /// Not a loss: task states the kernel made in task storage because the task's
    /// slot of the tid array was another's.
    pub tids_taken_total: u64,
    /// Not a loss: calls of followed tasks that took the kernel's general path
    /// rather than the common call (docs/ebpf.md, "The common call").
    pub general_calls_total: u64,
    /// Profiles in training.
    pub profiles_training: u64,
    /// Profiles frozen (waiting to become normal).
    pub profiles_frozen: u64,
    /// Profiles normal (testing).
    pub profiles_normal: u64,
    /// Processes currently under response (a gauge).
    pub under_response: u64,
    /// Profiles evicted because their executable no longer exists.
    pub evicted_deleted_total: u64,
    /// Profiles evicted because the profile map was near full.
    pub evicted_lru_total: u64,
    /// Calls counted under normal profiles (kernel `calls`, summed per tick).
    pub calls_normal_total: u64,
    /// Calls counted under any profile.
    pub calls_total: u64,
    /// With `--symbols args`: the argument classes' loss counters (overflowed,
    /// map_full, unread, lost_events); absent otherwise, and then not shown.
    pub argument_losses: Option<[u64; 4]>,
    /// With `--throttle-connect` or `--rate-limit`: their event counts; absent
    /// otherwise, and then not shown.
    pub limits: Option<homeostat_monitor::control::LimitCounts>,
}

impl Snapshot {
    /// The snapshot in the Prometheus text exposition format 0.0.4: each metric with
    /// its `# HELP` and `# TYPE` lines, then its samples; newline-terminated.
    pub fn render(&self) -> String {
        let counters: [(&str, &str, u64); 11] = [
            (
                "homeostat_events_total",
                "Events received from the kernel.",
                self.events_total,
            ),
            (
                "homeostat_anomalies_total",
                "Anomalous system calls detected.",
                self.anomalies_total,
            ),
            (
                "homeostat_responses_total",
                "Processes stopped and put under response.",
                self.responses_total,
            ),
            (
                "homeostat_delays_total",
                "System calls delayed.",
                self.delays_total,
            ),
            (
                "homeostat_execve_refused_total",
                "execve calls refused.",
                self.execve_refused_total,
            ),
            (
                "homeostat_lost_events_total",
                "Events the kernel could not queue to the daemon.",
                self.lost_events_total,
            ),
            (
                "homeostat_rows_full_total",
                "Pairs the kernel could not learn because a profile's rows were full.",
                self.rows_full_total,
            ),
            (
                "homeostat_tasks_full_total",
                "Tasks the kernel could not track because its task map was full.",
                self.tasks_full_total,
            ),
            (
                "homeostat_profiles_full_total",
                "Profiles the kernel could not create because its profile map was full.",
                self.profiles_full_total,
            ),
            (
                "homeostat_tids_taken_total",
                "Times a task's state found both of its slots held and went to task storage (each call of such a task on the general path); a task can count more than once.",
                self.tids_taken_total,
            ),
            (
                "homeostat_general_calls_total",
                "Calls of followed tasks that took the kernel's general path (first calls, unknown windows, hooks, misses, learnt pairs) rather than the common call.",
                self.general_calls_total,
            ),
        ];
        let mut out = String::with_capacity(2048);
        for (name, help, value) in counters {
            metric_header(&mut out, name, help, "counter");
            let _ = writeln!(out, "{name} {value}");
        }
        labelled(
            &mut out,
            "homeostat_profiles",
            "Profiles by lifecycle state.",
            "gauge",
            "state",
            [
                ("training", self.profiles_training),
                ("frozen", self.profiles_frozen),
                ("normal", self.profiles_normal),
            ],
        );
        metric_header(
            &mut out,
            "homeostat_under_response",
            "Processes currently under response.",
            "gauge",
        );
        let _ = writeln!(out, "homeostat_under_response {}", self.under_response);
        labelled(
            &mut out,
            "homeostat_profiles_evicted_total",
            "Profiles evicted: their executable was deleted, or the profile map was near full.",
            "counter",
            "reason",
            [
                ("deleted", self.evicted_deleted_total),
                ("lru", self.evicted_lru_total),
            ],
        );
        labelled(
            &mut out,
            "homeostat_calls_total",
            "System calls of profiled executables, by the profile's state when counted.",
            "counter",
            "state",
            [
                ("normal", self.calls_normal_total),
                (
                    "learning",
                    self.calls_total.saturating_sub(self.calls_normal_total),
                ),
            ],
        );
        if let Some([overflowed, map_full, unread, lost_events]) = self.argument_losses {
            labelled(
                &mut out,
                "homeostat_argument_losses_total",
                "Argument classes not learnt or not tested (--symbols args): past a profile's cap, class map full, argument unreadable, event lost.",
                "counter",
                "kind",
                [
                    ("overflowed", overflowed),
                    ("map_full", map_full),
                    ("unread", unread),
                    ("lost_events", lost_events),
                ],
            );
        }
        if let Some(l) = &self.limits {
            labelled(
                &mut out,
                "homeostat_throttle_events_total",
                "Connection throttle (--throttle-connect): connects to new hosts queued, held by a response, released; alarms (queue of 5 or more).",
                "counter",
                "event",
                [
                    ("queued", l.throttle_queued),
                    ("held", l.throttle_held),
                    ("released", l.throttle_released),
                    ("alarm", l.throttle_alarms),
                ],
            );
            labelled(
                &mut out,
                "homeostat_rate_limit_events_total",
                "Fork and file-creation rate limits (--rate-limit): calls over a learned limit, held in a queue, released; alarms.",
                "counter",
                "event",
                [
                    ("exceeded", l.rate_exceeded),
                    ("queued", l.rate_queued),
                    ("released", l.rate_released),
                    ("alarm", l.rate_alarms),
                ],
            );
            labelled(
                &mut out,
                "homeostat_limit_losses_total",
                "Throttle and rate limits: connect addresses the kernel could not read (throttled as unknown hosts), events the kernel dropped.",
                "counter",
                "kind",
                [
                    ("unread", l.unread_addresses),
                    ("lost_events", l.lost_events),
                ],
            );
            labelled(
                &mut out,
                "homeostat_limit_waiting",
                "Calls waiting now in the connection throttle's queues (connects to new hosts) and the rate limits' (forks and file creations).",
                "gauge",
                "limit",
                [("throttle", l.throttle_waiting), ("rate", l.rate_waiting)],
            );
        }
        out
    }
}

/// A metric with one label: its header, then a sample per (label value, value).
fn labelled<const N: usize>(
    out: &mut String,
    name: &str,
    help: &str,
    kind: &str,
    label: &str,
    samples: [(&str, u64); N],
) {
    metric_header(out, name, help, kind);
    for (l, value) in samples {
        let _ = writeln!(out, "{name}{{{label}=\"{l}\"}} {value}");
    }
}

fn metric_header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// How long a client has to send its request (all of it, not per read).
const REQUEST_DEADLINE: Duration = Duration::from_secs(2);
/// How long writing the answer may block.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest request head read; longer requests are answered 431.
const MAX_REQUEST: usize = 8192;
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The endpoint's thread. Dropping it stops the thread: the listener is closed, so
/// connections are refused from then on.
pub struct MetricsServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// Binds `addr` (must be a loopback address: 127.0.0.0/8 or ::1) and starts a
    /// thread answering `GET /metrics` with the latest `shared` snapshot (200,
    /// `Content-Type: text/plain; version=0.0.4`); any other path is 404. One request
    /// per connection, `Connection: close`.
    pub fn start(addr: SocketAddr, shared: Arc<Mutex<Snapshot>>) -> Result<MetricsServer> {
        if !addr.ip().is_loopback() {
            bail!("metrics address {addr} is not loopback (the endpoint is unauthenticated)");
        }
        let listener =
            TcpListener::bind(addr).with_context(|| format!("binding metrics address {addr}"))?;
        let addr = listener
            .local_addr()
            .with_context(|| format!("metrics address {addr}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = stop.clone();
        let thread = std::thread::Builder::new()
            .name("homeostat-metrics".into())
            .spawn(move || accept_loop(listener, &shared, &thread_stop))
            .context("starting the metrics thread")?;
        Ok(MetricsServer {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    /// The bound address (the actual port when started on port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // The thread is blocked in accept (or serving a client, bounded by the
        // deadlines): a connection of our own wakes it to see the flag. If that
        // connection cannot be made, leave the thread rather than hang the caller.
        let woken = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1)).is_ok();
        if let Some(thread) = self.thread.take() {
            if woken {
                let _ = thread.join();
            }
        }
    }
}

fn accept_loop(listener: TcpListener, shared: &Mutex<Snapshot>, stop: &AtomicBool) {
    loop {
        let accepted = listener.accept();
        if stop.load(Ordering::SeqCst) {
            return;
        }
        match accepted {
            Ok((conn, _)) => {
                let _ = serve(conn, shared);
            }
            // Out of file descriptors and the like: do not spin.
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Answers one request on `conn`.
fn serve(mut conn: TcpStream, shared: &Mutex<Snapshot>) -> std::io::Result<()> {
    conn.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let (status, body) = match read_request_line(&mut conn)? {
        None => ("431 Request Header Fields Too Large", String::new()),
        Some(line) => route(&line, shared),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        if status.starts_with("200") {
            CONTENT_TYPE
        } else {
            "text/plain; charset=utf-8"
        },
        body.len()
    );
    conn.write_all(head.as_bytes())?;
    conn.write_all(body.as_bytes())?;
    conn.flush()?;
    let _ = conn.shutdown(Shutdown::Write);
    Ok(())
}

/// Reads the request head (up to the blank line) within [`REQUEST_DEADLINE`] and returns
/// its first line; `None` if the head is longer than [`MAX_REQUEST`]. A client that is
/// too slow or closes early is an error (nothing is answered).
fn read_request_line(conn: &mut TcpStream) -> std::io::Result<Option<String>> {
    let deadline = Instant::now() + REQUEST_DEADLINE;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && !buf.windows(2).any(|w| w == b"\n\n") {
        if buf.len() > MAX_REQUEST {
            return Ok(None);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        conn.set_read_timeout(Some(left))?;
        let n = conn.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf);
    Ok(Some(head.lines().next().unwrap_or("").to_string()))
}

/// The status and body for a request line such as `GET /metrics HTTP/1.1`.
fn route(line: &str, shared: &Mutex<Snapshot>) -> (&'static str, String) {
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return ("400 Bad Request", "bad request\n".into());
    };
    if !version.starts_with("HTTP/1.") {
        return ("400 Bad Request", "bad request\n".into());
    }
    let path = target.split('?').next().unwrap_or(target);
    if path != "/metrics" {
        return (
            "404 Not Found",
            "not found: only /metrics is served\n".into(),
        );
    }
    if method != "GET" {
        return ("405 Method Not Allowed", "only GET is allowed\n".into());
    }
    // The snapshot is plain numbers: a panic elsewhere while holding the lock leaves
    // nothing half-updated that matters, so a poisoned lock is still read.
    let snapshot = shared.lock().unwrap_or_else(|e| e.into_inner()).clone();
    ("200 OK", snapshot.render())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Snapshot {
        Snapshot {
            events_total: 1,
            anomalies_total: 2,
            responses_total: 3,
            delays_total: 4,
            execve_refused_total: 5,
            lost_events_total: 6,
            rows_full_total: 7,
            tasks_full_total: 8,
            profiles_full_total: 9,
            tids_taken_total: 17,
            general_calls_total: 18,
            profiles_training: 10,
            profiles_frozen: 11,
            profiles_normal: 12,
            under_response: 13,
            evicted_deleted_total: 14,
            evicted_lru_total: 15,
            calls_normal_total: 16,
            calls_total: 20,
            argument_losses: None,
            limits: None,
        }
    }

    #[test]
    fn limit_counts_show_only_with_a_throttle_or_rate_limits() {
        assert!(!sample().render().contains("throttle"));
        let s = Snapshot {
            limits: Some(homeostat_monitor::control::LimitCounts {
                throttle_held: 2,
                rate_queued: 5,
                throttle_waiting: 3,
                lost_events: 4,
                ..Default::default()
            }),
            ..sample()
        };
        let text = s.render();
        for line in [
            "# TYPE homeostat_throttle_events_total counter",
            "homeostat_throttle_events_total{event=\"held\"} 2",
            "homeostat_throttle_events_total{event=\"queued\"} 0",
            "# TYPE homeostat_rate_limit_events_total counter",
            "homeostat_rate_limit_events_total{event=\"queued\"} 5",
            "# TYPE homeostat_limit_waiting gauge",
            "homeostat_limit_waiting{limit=\"throttle\"} 3",
            "homeostat_limit_waiting{limit=\"rate\"} 0",
            "# TYPE homeostat_limit_losses_total counter",
            "homeostat_limit_losses_total{kind=\"lost_events\"} 4",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
        }
    }

    #[test]
    fn argument_losses_show_only_with_argument_classes() {
        assert!(!sample().render().contains("argument_losses"));
        let s = Snapshot {
            argument_losses: Some([1, 2, 3, 4]),
            ..sample()
        };
        let text = s.render();
        for line in [
            "# TYPE homeostat_argument_losses_total counter",
            "homeostat_argument_losses_total{kind=\"overflowed\"} 1",
            "homeostat_argument_losses_total{kind=\"map_full\"} 2",
            "homeostat_argument_losses_total{kind=\"unread\"} 3",
            "homeostat_argument_losses_total{kind=\"lost_events\"} 4",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
        }
    }

    #[test]
    fn render_is_the_text_format() {
        let expected = "\
# HELP homeostat_events_total Events received from the kernel.
# TYPE homeostat_events_total counter
homeostat_events_total 1
# HELP homeostat_anomalies_total Anomalous system calls detected.
# TYPE homeostat_anomalies_total counter
homeostat_anomalies_total 2
# HELP homeostat_responses_total Processes stopped and put under response.
# TYPE homeostat_responses_total counter
homeostat_responses_total 3
# HELP homeostat_delays_total System calls delayed.
# TYPE homeostat_delays_total counter
homeostat_delays_total 4
# HELP homeostat_execve_refused_total execve calls refused.
# TYPE homeostat_execve_refused_total counter
homeostat_execve_refused_total 5
# HELP homeostat_lost_events_total Events the kernel could not queue to the daemon.
# TYPE homeostat_lost_events_total counter
homeostat_lost_events_total 6
# HELP homeostat_rows_full_total Pairs the kernel could not learn because a profile's rows were full.
# TYPE homeostat_rows_full_total counter
homeostat_rows_full_total 7
# HELP homeostat_tasks_full_total Tasks the kernel could not track because its task map was full.
# TYPE homeostat_tasks_full_total counter
homeostat_tasks_full_total 8
# HELP homeostat_profiles_full_total Profiles the kernel could not create because its profile map was full.
# TYPE homeostat_profiles_full_total counter
homeostat_profiles_full_total 9
# HELP homeostat_tids_taken_total Times a task's state found both of its slots held and went to task storage (each call of such a task on the general path); a task can count more than once.
# TYPE homeostat_tids_taken_total counter
homeostat_tids_taken_total 17
# HELP homeostat_general_calls_total Calls of followed tasks that took the kernel's general path (first calls, unknown windows, hooks, misses, learnt pairs) rather than the common call.
# TYPE homeostat_general_calls_total counter
homeostat_general_calls_total 18
# HELP homeostat_profiles Profiles by lifecycle state.
# TYPE homeostat_profiles gauge
homeostat_profiles{state=\"training\"} 10
homeostat_profiles{state=\"frozen\"} 11
homeostat_profiles{state=\"normal\"} 12
# HELP homeostat_under_response Processes currently under response.
# TYPE homeostat_under_response gauge
homeostat_under_response 13
# HELP homeostat_profiles_evicted_total Profiles evicted: their executable was deleted, or the profile map was near full.
# TYPE homeostat_profiles_evicted_total counter
homeostat_profiles_evicted_total{reason=\"deleted\"} 14
homeostat_profiles_evicted_total{reason=\"lru\"} 15
# HELP homeostat_calls_total System calls of profiled executables, by the profile's state when counted.
# TYPE homeostat_calls_total counter
homeostat_calls_total{state=\"normal\"} 16
homeostat_calls_total{state=\"learning\"} 4
";
        assert_eq!(sample().render(), expected);
    }

    #[test]
    fn render_structure() {
        let (samples, types) = check_structure(&Snapshot::default().render());
        assert_eq!((samples, types), (19, 15));
        // Every optional section on: still one HELP and TYPE per metric, before its
        // samples, and each metric's samples together.
        let all = Snapshot {
            argument_losses: Some([0; 4]),
            limits: Some(Default::default()),
            ..Snapshot::default()
        };
        let (samples, types) = check_structure(&all.render());
        assert_eq!((samples, types), (19 + 4 + 4 + 4 + 2 + 2, 15 + 5));
    }

    /// Checks the exposition's structure; returns its samples and TYPE lines.
    fn check_structure(text: &str) -> (usize, usize) {
        assert!(text.ends_with('\n'));
        let lines: Vec<&str> = text.lines().collect();
        let mut samples = 0;
        for (i, line) in lines.iter().enumerate() {
            if line.starts_with('#') {
                continue;
            }
            samples += 1;
            let (series, value) = line.rsplit_once(' ').unwrap();
            assert_eq!(value, "0", "{line}");
            let name = series.split('{').next().unwrap();
            assert!(name.starts_with("homeostat_"), "{line}");
            // Every sample's metric was introduced by HELP then TYPE, once.
            let help = format!("# HELP {name} ");
            let type_ = format!("# TYPE {name} ");
            let h = lines.iter().position(|l| l.starts_with(&help)).unwrap();
            let t = lines.iter().position(|l| l.starts_with(&type_)).unwrap();
            assert_eq!(t, h + 1, "{name}");
            assert!(t < i, "{name}");
            assert_eq!(lines.iter().filter(|l| l.starts_with(&help)).count(), 1);
            let kind = if name.ends_with("_total") {
                "counter"
            } else {
                "gauge"
            };
            assert_eq!(lines[t], format!("# TYPE {name} {kind}"));
            // Only this metric's samples between its TYPE and this sample.
            for l in &lines[t + 1..i] {
                let n = l.split(['{', ' ']).next().unwrap();
                assert_eq!(n, name, "{line} separated from its TYPE by {l}");
            }
        }
        (samples, text.matches("# TYPE").count())
    }

    #[test]
    fn non_loopback_is_refused() {
        let shared = Arc::new(Mutex::new(Snapshot::default()));
        for (addr, text) in [
            (
                "0.0.0.0:9100",
                "metrics address 0.0.0.0:9100 is not loopback (the endpoint is unauthenticated)",
            ),
            (
                "192.168.1.10:9100",
                "metrics address 192.168.1.10:9100 is not loopback (the endpoint is unauthenticated)",
            ),
            (
                "[::]:9100",
                "metrics address [::]:9100 is not loopback (the endpoint is unauthenticated)",
            ),
        ] {
            let err = MetricsServer::start(addr.parse().unwrap(), shared.clone())
                .err()
                .unwrap();
            assert_eq!(format!("{err:#}"), text);
        }
    }

    fn get(addr: SocketAddr, request: &str) -> (String, String, String) {
        let mut conn = TcpStream::connect(addr).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        conn.write_all(request.as_bytes()).unwrap();
        let mut reply = String::new();
        conn.read_to_string(&mut reply).unwrap();
        let (head, body) = reply.split_once("\r\n\r\n").unwrap();
        let status = head.lines().next().unwrap().to_string();
        (status, head.to_string(), body.to_string())
    }

    #[test]
    fn serves_the_latest_snapshot() {
        let shared = Arc::new(Mutex::new(Snapshot::default()));
        let server = MetricsServer::start("127.0.0.1:0".parse().unwrap(), shared.clone()).unwrap();
        let addr = server.local_addr();
        assert!(addr.ip().is_loopback());
        assert_ne!(addr.port(), 0);

        // Set after start: the snapshot is read per request.
        shared.lock().unwrap().events_total = 4242;
        shared.lock().unwrap().profiles_frozen = 3;
        let (status, head, body) = get(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert!(
            head.contains("Content-Type: text/plain; version=0.0.4"),
            "{head}"
        );
        assert!(head.contains("Connection: close"), "{head}");
        assert!(
            head.contains(&format!("Content-Length: {}", body.len())),
            "{head}"
        );
        assert!(body.contains("\nhomeostat_events_total 4242\n"), "{body}");
        assert!(
            body.contains("\nhomeostat_profiles{state=\"frozen\"} 3\n"),
            "{body}"
        );

        shared.lock().unwrap().events_total = 4243;
        let (_, _, body) = get(addr, "GET /metrics?x=1 HTTP/1.0\r\n\r\n");
        assert!(body.contains("\nhomeostat_events_total 4243\n"), "{body}");

        let (status, _, _) = get(addr, "GET /other HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(status, "HTTP/1.1 404 Not Found");
        let (status, _, _) = get(addr, "POST /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(status, "HTTP/1.1 405 Method Not Allowed");
        let (status, _, _) = get(addr, "nonsense\r\n\r\n");
        assert_eq!(status, "HTTP/1.1 400 Bad Request");

        // Dropping the server stops serving.
        drop(server);
        assert!(TcpStream::connect(addr).is_err());
    }

    #[test]
    fn a_silent_client_does_not_block_the_endpoint() {
        let shared = Arc::new(Mutex::new(Snapshot::default()));
        let server = MetricsServer::start("127.0.0.1:0".parse().unwrap(), shared).unwrap();
        let addr = server.local_addr();
        let _silent = TcpStream::connect(addr).unwrap();
        let start = Instant::now();
        let (status, _, _) = get(addr, "GET /metrics HTTP/1.1\r\n\r\n");
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert!(start.elapsed() < REQUEST_DEADLINE + Duration::from_secs(3));
        // Dropping while a client trickles does not hang either.
        let mut slow = TcpStream::connect(addr).unwrap();
        slow.write_all(b"GET /met").unwrap();
        let start = Instant::now();
        drop(server);
        assert!(start.elapsed() < REQUEST_DEADLINE + Duration::from_secs(3));
    }
}
