//! Training: truncated BPTT over packed lanes, AdamW, gradient clipping, early stopping
//! on held-out normal traces.

use std::time::Instant;

use candle_core::{Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use homeostat_core::alphabet::Alphabet;
use indicatif::{ProgressBar, ProgressStyle};

use crate::net::Net;
use crate::pack::pack;
use crate::rng::Rng;
use crate::score::{nll_ids, SCORE_NAMES};
use crate::{Lm, LmConfig, LmError, TrainStats, Weights};

/// Whether training shows a progress bar.
#[derive(Clone, Copy)]
pub enum Progress<'a> {
    /// Nothing printed.
    Quiet,
    /// A bar on stderr, drawn only when stderr is a terminal.
    Bar,
    /// `(chunks done, chunks planned)` after every chunk, for a caller's own display.
    Report(&'a (dyn Fn(u64, u64) + Sync)),
}

/// Lanes of the held-out scoring batches.
const EVAL_LANES: usize = 128;

/// Trains a model on normal traces (raw call numbers).
///
/// Every `holdout_every`-th trace is held out: training stops when the mean per-call
/// NLL on the held-out traces has not improved for `patience` epochs (or at `epochs`,
/// or before an epoch that would cross `time_limit_secs`, judged by the last epoch's
/// time), and the best epoch's weights are kept. The anomalous-call threshold is the
/// `quantile` of the held-out per-call NLLs. Calls the alphabet never saw are left out
/// of the held-out loss (their NLL only grows as training sharpens the model, which
/// would stop it for the wrong reason).
pub fn train(traces: &[&[u32]], config: &LmConfig, progress: Progress<'_>) -> Result<Lm, LmError> {
    config.validate()?;
    let started = Instant::now();
    let held =
        |i: usize| config.holdout_every > 0 && i % config.holdout_every == config.holdout_every - 1;
    let mut alphabet = Alphabet::new();
    for (i, t) in traces.iter().enumerate() {
        if !held(i) {
            for &c in t.iter() {
                alphabet.intern(c);
            }
        }
    }
    let ids: Vec<Vec<u16>> = traces
        .iter()
        .map(|t| t.iter().map(|&c| alphabet.id(c)).collect())
        .collect();
    let (mut fit, mut hold): (Vec<Vec<u16>>, Vec<Vec<u16>>) = (vec![], vec![]);
    for (i, t) in ids.into_iter().enumerate() {
        if t.is_empty() {
            continue;
        }
        if held(i) {
            hold.push(t);
        } else {
            fit.push(t);
        }
    }
    let fit_calls: usize = fit.iter().map(Vec::len).sum();
    if fit_calls == 0 {
        return Err(LmError::Empty);
    }
    let n = alphabet.len();
    let (vocab_in, vocab_out, bos) = (n + 2, n + 1, (n + 1) as u32);
    let mut rng = Rng::new(config.seed);
    let dev = Device::Cpu;
    let init = Net::init(
        config.cell,
        config.layers,
        config.hidden,
        vocab_in,
        vocab_out,
        &mut rng,
    );
    let mut net = Net::from_weights(&init, &dev)?;
    let params = net.trainable()?;
    let mut opt = AdamW::new(
        params.vars.clone(),
        ParamsAdamW {
            lr: config.lr,
            weight_decay: config.weight_decay,
            ..ParamsAdamW::default()
        },
    )?;
    let lanes = config.batch.min(fit.len()).max(1);
    let per_epoch = fit_calls.div_ceil(lanes).div_ceil(config.chunk) as u64;
    let planned = per_epoch * config.epochs as u64;
    let bar = match progress {
        Progress::Bar => ProgressBar::new(planned),
        _ => ProgressBar::hidden(),
    };
    let mut done = 0u64;
    bar.set_style(
        ProgressStyle::with_template(
            "lm {msg} [{elapsed_precise}] {wide_bar} {pos}/{len} chunks (eta {eta})",
        )
        .expect("valid template"),
    );
    // The held-out loss is measured on the held-out traces or, without any, on the
    // training traces themselves (then it only tracks convergence).
    let check = if hold.is_empty() { &fit } else { &hold };
    let mut stats = TrainStats {
        train_traces: fit.len() as u64,
        train_calls: fit_calls as u64,
        holdout_traces: hold.len() as u64,
        ..TrainStats::default()
    };
    let mut best: Option<(f64, Weights)> = None;
    let mut order: Vec<usize> = (0..fit.len()).collect();
    let mut since_best = 0;
    let mut epoch_secs = 0.0f64;
    for epoch in 1..=config.epochs {
        // Stop before an epoch that would cross the time limit, judged by the last one.
        let elapsed = started.elapsed().as_secs_f64();
        if config.time_limit_secs > 0 && elapsed + epoch_secs > config.time_limit_secs as f64 {
            break;
        }
        let epoch_start = Instant::now();
        rng.shuffle(&mut order);
        let p = pack(&fit, &order, lanes, config.chunk, bos);
        let mut h = net.zeros(p.lanes, &dev)?;
        let (mut loss_sum, mut loss_w) = (0.0f64, 0.0f64);
        for c in 0..p.chunks(config.chunk) {
            let chunk = p.chunk(c, config.chunk);
            let wsum: f32 = chunk.weight.iter().sum();
            if wsum == 0.0 {
                continue;
            }
            let weight = Tensor::from_slice(&chunk.weight, chunk.weight.len(), &dev)?;
            let masks = dropout_masks(config, &net, p.lanes, &mut rng, &dev)?;
            let (nll, last) = net.forward(&chunk, config.chunk, p.lanes, &h, masks.as_deref())?;
            h = last.iter().map(Tensor::detach).collect();
            let loss = ((nll * weight)?.sum_all()? / f64::from(wsum))?;
            let mut grads = loss.backward()?;
            clip(&mut grads, &params.vars, config.clip)?;
            opt.step(&grads)?;
            loss_sum += f64::from(loss.to_scalar::<f32>()?) * f64::from(wsum);
            loss_w += f64::from(wsum);
            bar.inc(1);
            done += 1;
            if let Progress::Report(f) = progress {
                f(done, planned);
            }
        }
        let eval = net.detached();
        let nlls = nll_ids(&eval, check, EVAL_LANES, bos, &dev)?;
        let held_nll = mean_known(check, &nlls);
        stats.epochs_run = epoch as u32;
        stats.history.push((loss_sum / loss_w.max(1.0), held_nll));
        bar.set_message(format!(
            "epoch {epoch}: train {:.4} held-out {held_nll:.4}",
            loss_sum / loss_w.max(1.0)
        ));
        if best.as_ref().is_none_or(|(b, _)| held_nll < *b) {
            best = Some((held_nll, eval.to_weights()?));
            stats.best_epoch = epoch as u32;
            stats.holdout_nll = held_nll;
            since_best = 0;
        } else {
            since_best += 1;
        }
        epoch_secs = epoch_start.elapsed().as_secs_f64();
        if since_best >= config.patience {
            break;
        }
    }
    bar.finish_and_clear();
    let (_, weights) = best.ok_or(LmError::Empty)?;
    let mut lm = Lm {
        alphabet,
        weights,
        threshold: 0.0,
        config: config.clone(),
        stats,
        held_out: vec![],
    };
    // The threshold from the kept weights' NLLs on the held-out (or training) calls.
    let kept = Net::from_weights(&lm.weights, &dev)?;
    let per_trace = nll_ids(&kept, check, EVAL_LANES, bos, &dev)?;
    let mut all: Vec<f32> = per_trace.iter().flatten().copied().collect();
    all.sort_by(f32::total_cmp);
    let at = ((all.len() as f64 * config.quantile) as usize).min(all.len().saturating_sub(1));
    lm.threshold = all.get(at).copied().unwrap_or(0.0);
    // The held-out traces' trace scores, for an ensemble's normalisation: the model
    // never fitted them (they only chose the epoch and the threshold).
    if !hold.is_empty() {
        lm.held_out = per_trace
            .iter()
            .map(|n| {
                let s = lm.score_nlls(n);
                SCORE_NAMES.iter().filter_map(|k| s.get(k)).collect()
            })
            .collect();
    }
    lm.stats.seconds = started.elapsed().as_secs_f64();
    Ok(lm)
}

/// Training's dropout masks for one chunk, one `[chunk, lanes, H]` mask per layer
/// (inverted dropout: kept units are scaled by 1/(1-p), so scoring needs no change);
/// `None` without dropout. Drawn from the seeded generator, so training stays
/// repeatable.
fn dropout_masks(
    config: &LmConfig,
    net: &Net,
    lanes: usize,
    rng: &mut Rng,
    dev: &Device,
) -> Result<Option<Vec<Tensor>>, LmError> {
    if config.dropout <= 0.0 {
        return Ok(None);
    }
    let keep = 1.0 - config.dropout as f32;
    let n = config.chunk * lanes * net.hidden;
    let masks = (0..net.layers())
        .map(|_| {
            let m: Vec<f32> = (0..n)
                .map(|_| {
                    if rng.uniform(0.5) + 0.5 < keep {
                        1.0 / keep
                    } else {
                        0.0
                    }
                })
                .collect();
            Tensor::from_slice(&m, (config.chunk, lanes, net.hidden), dev)
        })
        .collect::<candle_core::Result<Vec<_>>>()?;
    Ok(Some(masks))
}

/// Mean NLL over calls the alphabet knows.
fn mean_known(ids: &[Vec<u16>], nlls: &[Vec<f32>]) -> f64 {
    let (mut sum, mut n) = (0.0f64, 0u64);
    for (t, v) in ids.iter().zip(nlls) {
        for (&c, &x) in t.iter().zip(v) {
            if c != homeostat_core::alphabet::UNKNOWN {
                sum += f64::from(x);
                n += 1;
            }
        }
    }
    if n == 0 {
        f64::INFINITY
    } else {
        sum / n as f64
    }
}

/// Scales all gradients down together when their global norm exceeds `max`.
fn clip(
    grads: &mut candle_core::backprop::GradStore,
    vars: &[candle_core::Var],
    max: f64,
) -> candle_core::Result<()> {
    let mut sq = 0.0f64;
    for v in vars {
        if let Some(g) = grads.get(v) {
            sq += f64::from(g.sqr()?.sum_all()?.to_scalar::<f32>()?);
        }
    }
    let norm = sq.sqrt();
    if norm > max {
        let scale = max / norm;
        for v in vars {
            if let Some(g) = grads.get(v) {
                let g = (g * scale)?;
                grads.insert(v, g);
            }
        }
    }
    Ok(())
}
