//! Prints one line per trace of the given files or directories: name, call count and
//! the first few calls by name. Handy for checking what a reader makes of a file.
//!
//! ```text
//! cargo run -p homeostat-traces --example trace_summary -- [--format F] [--arch A] PATH...
//! ```

use std::path::PathBuf;
use std::process::exit;

use homeostat_traces::{expand_inputs, read_file, ReadOptions, TraceCollector};

fn fail(msg: &str) -> ! {
    eprintln!("error: {msg}");
    exit(2)
}

fn main() {
    let mut opts = ReadOptions::default();
    let mut paths = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--format" => {
                let v = args
                    .next()
                    .unwrap_or_else(|| fail("--format needs a value"));
                opts.format = Some(v.parse().unwrap_or_else(|e| fail(&format!("{e}"))));
            }
            "--arch" => {
                let v = args.next().unwrap_or_else(|| fail("--arch needs a value"));
                opts.arch = v.parse().unwrap_or_else(|e| fail(&format!("{e}")));
            }
            _ => paths.push(PathBuf::from(a)),
        }
    }
    let files = expand_inputs(&paths).unwrap_or_else(|e| fail(&e.to_string()));
    for file in files {
        let mut c = TraceCollector::new();
        if let Err(e) = read_file(&file, &opts, &mut c) {
            fail(&e.to_string());
        }
        for t in c.into_traces() {
            let head: Vec<String> = t
                .calls
                .iter()
                .take(8)
                .map(|&n| opts.arch.display(n).into_owned())
                .collect();
            let last = t.calls.last().map(|&n| opts.arch.display(n).into_owned());
            println!(
                "{}\t{} calls\t{} ... {}",
                t.id,
                t.calls.len(),
                head.join(" "),
                last.unwrap_or_default()
            );
        }
    }
}
