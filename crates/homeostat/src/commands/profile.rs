//! `homeostat profile ...`: the pH profiles in the state directory.
//!
//! These commands edit the profile files (atomically). A `homeostat run` that is
//! running keeps its own copy in memory and saves it over the file when it exits, so
//! administer profiles between runs.

use std::os::unix::fs::MetadataExt;

use anyhow::{bail, Result};
use homeostat_core::ph::{ExeKey, PhProfile};
use homeostat_core::Model;
use homeostat_monitor::ProfileStore;

use crate::cli::{ProfileCmd, ProfileTarget};

use super::run::open_store;

fn find(store: &ProfileStore, exe: &str) -> Result<PhProfile> {
    let (all, errors) = store.load_all();
    for e in errors {
        eprintln!("homeostat: warning: profile set aside: {e}");
    }
    let by_file = std::fs::metadata(exe).ok().map(|m| ExeKey {
        dev: m.dev(),
        ino: m.ino(),
    });
    let matches: Vec<PhProfile> = all
        .into_iter()
        .filter(|p| {
            Some(p.key) == by_file
                || p.key.to_string() == exe
                || p.path == exe
                || std::path::Path::new(&p.path)
                    .file_name()
                    .is_some_and(|f| f == exe)
        })
        .collect();
    match matches.len() {
        1 => Ok(matches.into_iter().next().expect("one match")),
        0 => bail!("no profile for {exe} in {}", store.dir().display()),
        n => bail!("{exe} matches {n} profiles; name it by path or key (homeostat profile list)"),
    }
}

fn line(p: &PhProfile) -> String {
    format!(
        "{:<9} {:>7} {:>10} {:>9}  {:<16} {}",
        p.state.to_string(),
        p.pairs(),
        p.train_count,
        p.anomalies,
        p.key.to_string(),
        p.path
    )
}

pub fn run(cmd: ProfileCmd) -> Result<()> {
    match cmd {
        ProfileCmd::List { state } => {
            let store = open_store(&state)?;
            let (mut all, errors) = store.load_all();
            for e in errors {
                eprintln!("homeostat: warning: profile set aside: {e}");
            }
            all.sort_by(|a, b| a.path.cmp(&b.path));
            println!(
                "{:<9} {:>7} {:>10} {:>9}  {:<16} exe",
                "state", "pairs", "trained", "anomalies", "key"
            );
            for p in &all {
                println!("{}", line(p));
            }
            Ok(())
        }
        ProfileCmd::Show(t) => {
            let store = open_store(&t.state)?;
            let p = find(&store, &t.exe)?;
            println!("exe            {}", p.path);
            println!("key            {}", p.key);
            println!("file           {}", store.path_for(p.key).display());
            println!("state          {}", p.state);
            println!("pairs          {}", p.pairs());
            println!("train_count    {}", p.train_count);
            println!("last_mod_count {}", p.last_mod_count);
            println!("anomalies      {}", p.anomalies);
            if p.state == homeostat_core::ph::ProfileState::Frozen {
                println!("normal at      {} (unix ns)", p.normal_time_ns);
            }
            println!("calls trained  {}", p.model().trained_calls());
            Ok(())
        }
        ProfileCmd::Normalize(t) => edit(t, |p| p.normalize(&mut |_| {})),
        ProfileCmd::Sensitize(t) => edit(t, |p| p.sensitize("sensitized", &mut |_| {})),
        ProfileCmd::Tolerize(t) => edit(t, |p| p.tolerize()),
        ProfileCmd::Reset(t) => {
            let store = open_store(&t.state)?;
            let p = find(&store, &t.exe)?;
            store.remove(p.key)?;
            println!("reset: {} ({}) will be learnt from nothing", p.path, p.key);
            Ok(())
        }
    }
}

fn edit(t: ProfileTarget, f: impl FnOnce(&mut PhProfile)) -> Result<()> {
    let store = open_store(&t.state)?;
    let mut p = find(&store, &t.exe)?;
    f(&mut p);
    store.save(&p)?;
    println!("{}", line(&p));
    Ok(())
}
