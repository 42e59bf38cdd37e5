//! `homeostat inspect`: what a profile holds.

use std::path::Path;

use anyhow::Result;
use homeostat_core::Model;
use homeostat_syscalls::Arch;

use crate::fsutil::{printable, read_profile};

pub fn run(path: &Path) -> Result<()> {
    let p = read_profile(path)?;
    let spec = p.model.spec();
    println!("profile   {}", path.display());
    println!(
        "model     {} (window {}, locality {})",
        spec.kind, spec.window, spec.locality
    );
    println!("arch      {}", printable(&p.meta.arch));
    println!("created   {} (unix seconds)", p.meta.created_unix);
    println!(
        "trained   {} traces, {} calls",
        p.meta.traces,
        p.model.trained_calls()
    );
    println!(
        "size      {} distinct {}",
        p.model.profile_size(),
        if spec.kind == homeostat_core::ModelKind::Pairs {
            "pairs"
        } else {
            "windows"
        }
    );
    let arch: Option<Arch> = p.meta.arch.parse().ok();
    let names: Vec<String> = p
        .model
        .symbols()
        .iter()
        .map(|&n| arch.map_or(n.to_string(), |a| a.display(n).into_owned()))
        .collect();
    println!("calls     {} distinct: {}", names.len(), names.join(" "));
    println!("source    {}", printable(&p.meta.source));
    Ok(())
}
