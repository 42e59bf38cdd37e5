//! `homeostat inspect`: what a profile holds.

use std::path::Path;

use anyhow::Result;
use homeostat_syscalls::Arch;

use crate::fsutil::printable;

pub fn run(path: &Path) -> Result<()> {
    let reg = super::models::registry();
    let p = crate::fsutil::read_profile(path, &reg)?;
    let d = &p.detector;
    println!("profile   {}", path.display());
    println!("model     {} ({})", d.kind(), d.describe());
    println!("scores    {}", d.score_names().join(", "));
    println!("arch      {}", printable(&p.meta.arch));
    println!("created   {} (unix seconds)", p.meta.created_unix);
    println!(
        "trained   {} traces, {} calls",
        p.meta.traces,
        d.trained_calls()
    );
    let unit = d.size_unit();
    if unit == "windows" || unit == "pairs" {
        println!("size      {} distinct {unit}", d.profile_size());
    } else {
        println!("size      {} {unit}", d.profile_size());
    }
    let symbols = d.symbols();
    if !symbols.is_empty() {
        let arch: Option<Arch> = p.meta.arch.parse().ok();
        let names: Vec<String> = symbols
            .iter()
            .map(|&n| arch.map_or(n.to_string(), |a| a.display(n).into_owned()))
            .collect();
        println!("calls     {} distinct: {}", names.len(), names.join(" "));
    }
    println!("source    {}", printable(&p.meta.source));
    Ok(())
}
