//! A tiny note service with a real bug, for `homeostat demo`.
//!
//! `homeostat-demo-service DATA_DIR REQUESTS OUT` serves the requests in the file
//! REQUESTS, one per line, and writes the answers to OUT:
//!
//! - `PUT <name> <text>`: store a note;
//! - `GET <name>`: print a note;
//! - `LIST`: list the notes;
//! - `COUNT <name>`: count the lines of a note.
//!
//! The bug: like Perl's two-argument `open`, a note name that starts with `|` is run
//! as a shell command and its output read as the note ("pipe open"). No normal client
//! sends such a name, so training never sees that code path; an attacker who finds it
//! gets a shell. That is the exploit `homeostat demo` sends.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};

fn read_note(dir: &Path, name: &str) -> std::io::Result<String> {
    if let Some(cmd) = name.strip_prefix('|') {
        // The vulnerable "pipe open".
        let out = Command::new("/bin/sh")
            .arg("-c")
            .arg(cmd)
            .stdin(Stdio::null())
            .output()?;
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    if !valid(name) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "bad name",
        ));
    }
    fs::read_to_string(dir.join(name))
}

fn valid(name: &str) -> bool {
    !name.is_empty() && !name.contains('/') && !name.starts_with('.')
}

fn serve(dir: &Path, line: &str, out: &mut impl Write) -> std::io::Result<()> {
    let (verb, rest) = line.split_once(' ').unwrap_or((line, ""));
    match verb {
        "PUT" => match rest.split_once(' ') {
            Some((name, text)) if valid(name) => {
                fs::write(dir.join(name), format!("{text}\n"))?;
                writeln!(out, "OK")
            }
            _ => writeln!(out, "ERR bad request"),
        },
        // The note name is the rest of the line: names may hold spaces.
        "GET" => match read_note(dir, rest) {
            Ok(text) => write!(out, "{text}"),
            Err(e) => writeln!(out, "ERR {e}"),
        },
        "COUNT" => match read_note(dir, rest) {
            Ok(text) => writeln!(out, "{}", text.lines().count()),
            Err(e) => writeln!(out, "ERR {e}"),
        },
        "LIST" if rest.is_empty() => {
            let mut names: Vec<String> = fs::read_dir(dir)?
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            writeln!(out, "{}", names.join(" "))
        }
        _ => writeln!(out, "ERR bad request"),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        eprintln!("usage: homeostat-demo-service DATA_DIR REQUESTS OUT");
        std::process::exit(2);
    }
    let dir = Path::new(&args[1]);
    let run = || -> std::io::Result<()> {
        let requests = BufReader::new(fs::File::open(&args[2])?);
        let mut out = std::io::BufWriter::new(fs::File::create(&args[3])?);
        for line in requests.lines() {
            serve(dir, line?.trim_end(), &mut out)?;
            out.flush()?;
        }
        Ok(())
    };
    if let Err(e) = run() {
        eprintln!("homeostat-demo-service: {e}");
        std::process::exit(1);
    }
}
