//! pH on the argument-aware alphabet under the real launcher: `cat`, trained under
//! `homeostat run --symbols args` on notes in one directory, then run (enforce, no
//! `--symbols`: the saved profile's alphabet applies) on a file of the same size in
//! another directory. The calls are the same, so the plain profile, trained alike,
//! sees nothing; the argument-aware one sees the open of a directory `cat` never
//! opened there, live.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

mod common;
use common::{bin, ok};

fn cat(dir: &Path, state: &str, flags: &[&str], file: &Path, events: Option<&str>) -> Vec<Value> {
    let mut cmd = bin();
    cmd.arg("run")
        .arg("--quiet")
        .arg("--state-dir")
        .arg(dir.join(state))
        .args(flags);
    let ev = events.map(|e| dir.join(e));
    if let Some(e) = &ev {
        cmd.arg("--events").arg(e);
    }
    let out = cmd.arg("--").arg("cat").arg(file).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, std::fs::read(file).unwrap());
    ev.map(|e| {
        std::fs::read_to_string(e)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    })
    .unwrap_or_default()
}

#[test]
fn the_same_calls_on_another_file_are_anomalous_with_arguments_only() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let text: Vec<u8> = (0..4000u32).map(|i| b'a' + (i % 26) as u8).collect();
    std::fs::create_dir_all(dir.join("notes")).unwrap();
    std::fs::create_dir_all(dir.join("secret")).unwrap();
    let notes: Vec<_> = (1..=5)
        .map(|i| {
            let p = dir.join(format!("notes/n{i}.txt"));
            std::fs::write(&p, &text[..i * 500]).unwrap();
            p
        })
        .collect();
    let secret = dir.join("secret/key.txt");
    std::fs::write(&secret, &text[..1500]).unwrap();

    let mut anomalies = vec![];
    for (state, symbols) in [("plain", "calls"), ("args", "args")] {
        // Depth 3: the temporary directory's notes/ and secret/ are classes of their own.
        let learn = ["--learn", "--symbols", symbols, "--path-depth", "3"];
        for _ in 0..3 {
            for n in &notes {
                cat(dir, state, &learn, n, None);
            }
        }
        ok(bin()
            .args(["profile", "normalize", "cat", "--state-dir"])
            .arg(dir.join(state)));
        let normal = cat(
            dir,
            state,
            &["--enforce"],
            &notes[2],
            Some(&format!("{state}-n")),
        );
        let attack = cat(
            dir,
            state,
            &["--enforce"],
            &secret,
            Some(&format!("{state}-a")),
        );
        let count = |ev: &[Value]| ev.iter().filter(|e| e["event"] == "anomaly").count();
        assert_eq!(count(&normal), 0, "{state}: {normal:?}");
        anomalies.push((state, count(&attack), attack));
    }
    let (_, plain, ev) = &anomalies[0];
    assert_eq!(*plain, 0, "plain calls: {ev:?}");
    let (_, args, ev) = &anomalies[1];
    assert!(*args > 0, "argument-aware: no anomaly");
    // The first anomalous call is the open of the other directory.
    let first = ev.iter().find(|e| e["event"] == "anomaly").unwrap();
    assert_eq!(first["syscall"], "openat", "{first}");
    assert_eq!(first["class"], "unseen class", "{first}");
    eprintln!("cat on a file in another directory: {plain} anomalies with plain calls, {args} with arguments");
}

/// One HTTP/1.0 GET of the note service; the body.
fn get(port: u16, query: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .unwrap();
    write!(
        s,
        "GET /cgi-bin/notes.cgi?{query} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or(out)
}

/// The note service (`data/notes-app/notes.cgi` behind python3's http.server --cgi)
/// under `homeostat run`, for as long as `work` runs; returns the perl handlers'
/// anomaly events.
fn serve(dir: &Path, state: &str, flags: &[&str], port: u16, work: &dyn Fn()) -> Vec<Value> {
    let events = dir.join(format!("{state}-{port}.events"));
    let child = bin()
        .arg("run")
        .arg("--quiet")
        .arg("--state-dir")
        .arg(dir.join(state))
        .arg("--events")
        .arg(&events)
        .arg("--config")
        .arg(dir.join("config.toml"))
        .args(flags)
        .args(["--", "/usr/bin/python3", "-m", "http.server", "--cgi"])
        .args(["--bind", "127.0.0.1", &port.to_string()])
        .current_dir(dir.join("www"))
        .env("NOTES_DIR", dir.join("notes"))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    /// Stops the service even when a request fails: SIGTERM goes on to python; the
    /// monitor saves and exits with it.
    struct Stop(std::process::Child);
    impl Drop for Stop {
        fn drop(&mut self) {
            let _ = Command::new("kill")
                .args(["-TERM", &self.0.id().to_string()])
                .status();
            let _ = self.0.wait();
        }
    }
    let stop = Stop(child);
    let up = (0..200).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(50));
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    assert!(up, "the note service did not start on port {port}");
    work();
    drop(stop);
    std::fs::read_to_string(&events)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e["event"] == "anomaly" && e["exe"].as_str().unwrap_or("").contains("perl"))
        .collect()
}

#[test]
fn a_path_traversal_in_a_live_web_service_is_caught_with_arguments_only() {
    use std::os::unix::fs::PermissionsExt;
    if !Path::new("/usr/bin/python3").exists() || !Path::new("/usr/bin/perl").exists() {
        panic!("/usr/bin/python3 and /usr/bin/perl are needed");
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // http.server runs CGI scripts as nobody when started by root.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::create_dir_all(dir.join("notes")).unwrap();
    std::fs::create_dir_all(dir.join("www/cgi-bin")).unwrap();
    for (n, text) in [
        ("todo.txt", "buy milk\nbuy bread\ncall the plumber\n"),
        ("meeting.txt", "Meeting notes\n- budget approved\n"),
        ("recipe.txt", "flour 500 g\nsugar 200 g\neggs 3\n"),
        ("fox.txt", "The quick brown fox jumps over the lazy dog.\n"),
    ] {
        std::fs::write(dir.join("notes").join(n), text).unwrap();
    }
    let cgi = dir.join("www/cgi-bin/notes.cgi");
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/notes-app/notes.cgi"),
        &cgi,
    )
    .unwrap();
    std::fs::set_permissions(&cgi, std::fs::Permissions::from_mode(0o755)).unwrap();
    // pH's delays, capped low: a detected request still completes in seconds.
    std::fs::write(dir.join("config.toml"), "[ph]\nmax_delay_ms = 10.0\n").unwrap();
    let train = [
        "list",
        "read=todo.txt",
        "read=meeting.txt",
        "search=buy",
        "read=recipe.txt",
        "list",
        "read=fox.txt",
        "search=note",
        "read=todo.txt",
        "search=eggs",
        "read=meeting.txt",
        "search=fox",
        "read=recipe.txt",
        "list",
        "read=fox.txt",
        "search=milk",
    ];
    let base = 20000 + (std::process::id() % 20000) as u16;
    let mut found = vec![];
    for (k, (state, symbols)) in [("plain", "calls"), ("args", "args")].iter().enumerate() {
        let port = base + 3 * k as u16;
        serve(
            dir,
            state,
            &["--learn", "--symbols", symbols],
            port,
            &|| {
                for q in train {
                    assert!(!get(port, q).is_empty(), "{q}");
                }
            },
        );
        ok(bin()
            .args(["profile", "normalize", "/usr/bin/perl", "--state-dir"])
            .arg(dir.join(state)));
        let normal = serve(dir, state, &["--enforce"], port + 1, &|| {
            for q in ["read=fox.txt", "list", "search=budget", "read=todo.txt"] {
                get(port + 1, q);
            }
        });
        let attack = serve(dir, state, &["--enforce"], port + 2, &|| {
            let body = get(port + 2, "read=../../../../../../../../etc/passwd");
            assert!(body.contains("root:"), "the traversal failed: {body}");
        });
        found.push((state, normal.len(), attack));
    }
    eprintln!(
        "note service, ?read=../../etc/passwd: {} anomalies with plain calls, {} with \
         arguments (normal requests: {} and {})",
        found[0].2.len(),
        found[1].2.len(),
        found[0].1,
        found[1].1
    );
    assert_eq!(found[0].1, 0, "plain: normal requests raised anomalies");
    assert_eq!(found[1].1, 0, "args: normal requests raised anomalies");
    assert!(found[0].2.is_empty(), "plain: {:?}", found[0].2);
    assert!(
        !found[1].2.is_empty(),
        "arguments: the traversal was not seen"
    );
}
