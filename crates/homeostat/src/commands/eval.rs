//! `homeostat eval`: build a labelled dataset, evaluate each requested model on it,
//! print a table or JSON, optionally plot ROC curves.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use homeostat_eval::datasets::{self, ValidationSplit};
use homeostat_eval::{evaluate, plot, Dataset as Data, EvalReport, Options};
use homeostat_traces::{Format, ReadOptions};

use crate::cli::{Dataset, EvalArgs};
use crate::fsutil::write_atomic;
use crate::{progress, sample};

fn load(dataset: Option<Dataset>) -> Result<Data> {
    Ok(match dataset.unwrap_or(Dataset::Sample) {
        Dataset::Sample => datasets::in_memory(
            "homeostat sample",
            sample::FILES,
            Format::Unm,
            &ReadOptions::default(),
        )?,
        Dataset::AdfaLd {
            dir,
            extra_train,
            threshold_traces,
            lidds,
        } => {
            let split = if lidds {
                Some(ValidationSplit::LIDDS)
            } else {
                extra_train.map(|n| ValidationSplit {
                    extra_train: n,
                    threshold: threshold_traces,
                })
            };
            datasets::adfa_ld(&dir, split)?
        }
        Dataset::Unm { lists } => datasets::labelled(
            "UNM",
            &lists.train,
            &lists.normal,
            &lists.attack,
            lists.train_fraction,
            &ReadOptions {
                format: Some(Format::Unm),
                ..ReadOptions::default()
            },
        )?,
        Dataset::Traces {
            lists,
            input,
            symbols,
        } => {
            homeostat_eval::arguments::labelled_symbols(
                "traces",
                &lists.train,
                &lists.normal,
                &lists.attack,
                lists.train_fraction,
                &super::read_options(&input),
                symbols.first().copied().unwrap_or_default(),
                Default::default(),
            )?
            .0
        }
    })
}

/// `eval traces --symbols calls,args`: the same data on each alphabet, one report each.
pub fn run(a: EvalArgs) -> Result<()> {
    if let Some(Dataset::Traces { symbols, .. }) = &a.dataset {
        if symbols.len() > 1 {
            for mode in symbols.clone() {
                let mut one = a.clone();
                if let Some(Dataset::Traces { symbols, .. }) = &mut one.dataset {
                    *symbols = vec![mode];
                }
                run_one(one)?;
            }
            return Ok(());
        }
    }
    run_one(a)
}

fn run_one(a: EvalArgs) -> Result<()> {
    let start = Instant::now();
    let c = a.common;
    let reg = super::models::registry();
    let names = super::models::model_names(&c.model);
    if names.is_empty() {
        bail!("no model given (--model stide,tstide,pairs,markov,knn,...)");
    }
    let params = super::models::params(&c.model_flags, &reg)?;
    for n in &names {
        reg.canonical(n).context("--model")?;
    }
    let ds = load(a.dataset)?;
    let load_seconds = start.elapsed().as_secs_f64();
    let normal = ds.test.iter().filter(|t| t.attack.is_none()).count();
    if ds.train.is_empty() || normal == 0 || normal == ds.test.len() {
        bail!(
            "dataset {} needs training, normal and attack traces (has {} training, {} normal, {} attack)",
            ds.name,
            ds.train.len(),
            normal,
            ds.test.len() - normal
        );
    }
    let opts = Options {
        threads: c.threads.max(1),
        ..Options::default()
    };
    let mut models = vec![];
    let test_calls = ds.test_calls();
    for name in &names {
        let fit = progress::bar(0, "steps");
        fit.set_message(format!("train {name}"));
        let pb = progress::bar(test_calls, "calls");
        pb.set_message(name.clone());
        let r = evaluate(
            &ds,
            &reg,
            name,
            &params,
            &opts,
            &|done, total| {
                fit.set_length(total);
                fit.set_position(done);
            },
            &|n| pb.inc(n),
        )
        .with_context(|| format!("evaluating {name}"))?;
        fit.finish_and_clear();
        pb.finish_and_clear();
        models.push(r);
    }
    let attack_types = ds
        .attack_types()
        .into_iter()
        .map(|t| {
            let n = ds
                .test
                .iter()
                .filter(|x| x.attack.as_deref() == Some(t.as_str()))
                .count();
            (t, n)
        })
        .collect();
    let report = EvalReport {
        dataset: ds.name.clone(),
        arch: ds.arch.clone(),
        train_traces: ds.train.len(),
        normal_traces: normal,
        attack_traces: ds.test.len() - normal,
        threshold_traces: ds.threshold.len(),
        attack_types,
        load_seconds,
        total_seconds: start.elapsed().as_secs_f64(),
        models,
    };
    if let Some(path) = &c.plot {
        let svg = plot::roc_svg(&format!("ROC on {}", report.dataset), &report.models);
        write_atomic(path, svg.as_bytes())
            .with_context(|| format!("writing plot {}", path.display()))?;
    }
    if c.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", report.to_table());
        if let Some(path) = &c.plot {
            println!("ROC curves written to {}", path.display());
        }
    }
    Ok(())
}
