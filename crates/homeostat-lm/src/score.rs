//! Per-call NLL and the trace scores built from it, streaming and batched.

use candle_core::Device;
use homeostat_core::{LocalityFrame, TraceScore};
use serde::{Deserialize, Serialize};

use crate::net::Net;
use crate::pack::pack;
use crate::{Lm, LmError};

/// Names of the trace scores, in the order [`LmScore::get`] knows them.
pub const SCORE_NAMES: [&str; 4] = ["mean_nll", "max_frame_nll", "max_lfc", "rate"];

/// What one trace scored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LmScore {
    /// Calls scored.
    pub calls: u64,
    /// Mean NLL per call (nats): how surprising the trace is as a whole.
    pub mean_nll: f64,
    /// Largest mean NLL over any `L` consecutive calls (the whole trace if shorter): a
    /// graded locality frame, so a short burst of surprise in a long trace still shows.
    pub max_frame_nll: f64,
    /// Calls whose NLL exceeds the model's threshold.
    pub anomalies: u64,
    /// Largest count of anomalous calls among any `L` consecutive calls.
    pub max_lfc: u32,
}

impl LmScore {
    /// Anomalous calls per call (0 for an empty trace).
    pub fn rate(&self) -> f64 {
        if self.calls == 0 {
            0.0
        } else {
            self.anomalies as f64 / self.calls as f64
        }
    }

    /// A score by name (see [`SCORE_NAMES`]).
    pub fn get(&self, name: &str) -> Option<f64> {
        Some(match name {
            "mean_nll" => self.mean_nll,
            "max_frame_nll" => self.max_frame_nll,
            "max_lfc" => f64::from(self.max_lfc),
            "rate" => self.rate(),
            _ => return None,
        })
    }

    /// The core's trace summary (units are calls, a mismatch is an anomalous call).
    pub fn trace_score(&self) -> TraceScore {
        TraceScore {
            calls: self.calls,
            units: self.calls,
            mismatches: self.anomalies,
            misses: self.anomalies,
            max_lfc: self.max_lfc,
        }
    }
}

/// Running trace scores over a stream of per-call NLLs, in memory bounded by `L`.
#[derive(Debug, Clone)]
struct Acc {
    threshold: f32,
    calls: u64,
    sum: f64,
    ring: Vec<f32>,
    next: usize,
    ring_sum: f64,
    max_frame: f64,
    frame: LocalityFrame,
    anomalies: u64,
    max_lfc: u32,
}

impl Acc {
    fn new(threshold: f32, locality: usize) -> Self {
        Acc {
            threshold,
            calls: 0,
            sum: 0.0,
            ring: vec![0.0; locality.max(1)],
            next: 0,
            ring_sum: 0.0,
            max_frame: 0.0,
            frame: LocalityFrame::new(locality),
            anomalies: 0,
            max_lfc: 0,
        }
    }

    fn push(&mut self, nll: f32) {
        self.calls += 1;
        self.sum += f64::from(nll);
        self.ring_sum += f64::from(nll) - f64::from(self.ring[self.next]);
        self.ring[self.next] = nll;
        self.next = (self.next + 1) % self.ring.len();
        let full = self.calls >= self.ring.len() as u64;
        if full {
            // Re-summing once per lap keeps the running sum from drifting.
            if self.next == 0 {
                self.ring_sum = self.ring.iter().map(|&v| f64::from(v)).sum();
            }
            self.max_frame = self.max_frame.max(self.ring_sum / self.ring.len() as f64);
        }
        let anomalous = nll > self.threshold;
        self.anomalies += u64::from(anomalous);
        self.max_lfc = self.max_lfc.max(self.frame.push(anomalous));
    }

    fn score(&self) -> LmScore {
        let mean = if self.calls == 0 {
            0.0
        } else {
            self.sum / self.calls as f64
        };
        let short = self.calls < self.ring.len() as u64;
        LmScore {
            calls: self.calls,
            mean_nll: mean,
            max_frame_nll: if short { mean } else { self.max_frame },
            anomalies: self.anomalies,
            max_lfc: self.max_lfc,
        }
    }
}

/// One task's streaming state: the GRU's hidden vector and the running trace scores.
/// Its memory is fixed at creation (hidden size, output size, frame size).
#[derive(Debug, Clone)]
pub struct LmState {
    h: Vec<f32>,
    gh: Vec<f32>,
    logits: Vec<f32>,
    acc: Acc,
}

impl LmState {
    /// The trace scores so far.
    pub fn score(&self) -> LmScore {
        self.acc.score()
    }

    /// Current LFC (anomalous calls among the last `L`).
    pub fn lfc(&self) -> u32 {
        self.acc.frame.lfc()
    }
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

impl Lm {
    /// A fresh task: the hidden state after the start-of-trace input.
    pub fn start(&self) -> LmState {
        let w = &self.weights;
        let mut s = LmState {
            h: vec![0.0; w.hidden],
            gh: vec![0.0; 3 * w.hidden],
            logits: vec![0.0; w.vocab_out],
            acc: Acc::new(self.threshold, self.config.locality),
        };
        self.step(&mut s, self.bos());
        s
    }

    fn step(&self, s: &mut LmState, input: usize) {
        let w = &self.weights;
        let hd = w.hidden;
        let h3 = 3 * hd;
        s.gh.copy_from_slice(&w.b_hh);
        for (i, &hi) in s.h.iter().enumerate() {
            let row = &w.w_hh[i * h3..(i + 1) * h3];
            for (g, &wv) in s.gh.iter_mut().zip(row) {
                *g += hi * wv;
            }
        }
        let x = &w.emb[input * h3..(input + 1) * h3];
        for j in 0..hd {
            let r = sigmoid(x[j] + s.gh[j]);
            let z = sigmoid(x[hd + j] + s.gh[hd + j]);
            let n = (x[2 * hd + j] + r * s.gh[2 * hd + j]).tanh();
            s.h[j] = n + z * (s.h[j] - n);
        }
    }

    fn nll_of(&self, s: &mut LmState, target: usize) -> f32 {
        let w = &self.weights;
        let v = w.vocab_out;
        s.logits.copy_from_slice(&w.out_b);
        for (i, &hi) in s.h.iter().enumerate() {
            let row = &w.out_w[i * v..(i + 1) * v];
            for (l, &wv) in s.logits.iter_mut().zip(row) {
                *l += hi * wv;
            }
        }
        let max = s.logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sum: f32 = s.logits.iter().map(|&l| (l - max).exp()).sum();
        max + sum.ln() - s.logits[target]
    }

    /// Scores the task's next call (a raw call number) and advances its state; returns
    /// the call's NLL in nats.
    pub fn push(&self, s: &mut LmState, raw: u32) -> f32 {
        let id = usize::from(self.alphabet.id(raw));
        let nll = self.nll_of(s, id);
        s.acc.push(nll);
        self.step(s, id);
        nll
    }

    /// Scores one whole trace call by call (the streaming path).
    pub fn score_stream(&self, calls: &[u32]) -> LmScore {
        let mut s = self.start();
        for &c in calls {
            self.push(&mut s, c);
        }
        s.score()
    }

    /// Trace scores from per-call NLLs, exactly as streaming accumulates them.
    pub fn score_nlls(&self, nlls: &[f32]) -> LmScore {
        let mut acc = Acc::new(self.threshold, self.config.locality);
        for &v in nlls {
            acc.push(v);
        }
        acc.score()
    }

    /// Per-call NLLs of many traces at once (the batched path): traces are packed into
    /// `lanes` parallel lanes and run through candle in chunks.
    pub fn nll_traces(&self, traces: &[&[u32]], lanes: usize) -> Result<Vec<Vec<f32>>, LmError> {
        let ids: Vec<Vec<u16>> = traces
            .iter()
            .map(|t| t.iter().map(|&c| self.alphabet.id(c)).collect())
            .collect();
        let dev = Device::Cpu;
        let net = Net::from_weights(&self.weights, &dev)?;
        nll_ids(&net, &ids, lanes, self.bos() as u32, &dev)
    }

    /// Trace scores of many traces at once: the traces are split over `threads`
    /// threads, each scoring its share call by call. Measured faster than running them
    /// through candle in lanes ([`Lm::nll_traces`]), whose fixed cost per tensor
    /// operation outweighs the small products of one step.
    pub fn score_traces(&self, traces: &[&[u32]], threads: usize) -> Vec<LmScore> {
        let threads = threads.clamp(1, traces.len().max(1));
        let per = traces.len().div_ceil(threads).max(1);
        std::thread::scope(|scope| {
            let parts: Vec<_> = traces
                .chunks(per)
                .map(|part| {
                    scope.spawn(move || {
                        part.iter()
                            .map(|t| self.score_stream(t))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            parts
                .into_iter()
                .flat_map(|p| p.join().expect("scoring thread panicked"))
                .collect()
        })
    }
}

/// Chunk length of the batched scoring path (no gradients, so only memory bounds it).
const SCORE_CHUNK: usize = 32;

/// Per-call NLLs of traces given as dense ids.
pub(crate) fn nll_ids(
    net: &Net,
    ids: &[Vec<u16>],
    lanes: usize,
    bos: u32,
    dev: &Device,
) -> Result<Vec<Vec<f32>>, LmError> {
    // Longest first, so greedy packing balances the lanes.
    let mut order: Vec<usize> = (0..ids.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(ids[i].len()));
    let total: usize = ids.iter().map(Vec::len).sum();
    let lanes = lanes.clamp(1, total.max(1));
    let p = pack(ids, &order, lanes, SCORE_CHUNK, bos);
    let mut flat = vec![0f32; p.lanes * p.len];
    let mut h = net.zeros(p.lanes, dev)?;
    for c in 0..p.chunks(SCORE_CHUNK) {
        let chunk = p.chunk(c, SCORE_CHUNK);
        let (nll, last) = net.forward(&chunk, SCORE_CHUNK, p.lanes, &h)?;
        h = last;
        let nll = nll.to_vec1::<f32>()?;
        for t in 0..SCORE_CHUNK {
            for lane in 0..p.lanes {
                flat[lane * p.len + c * SCORE_CHUNK + t] = nll[t * p.lanes + lane];
            }
        }
    }
    Ok(ids
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let (lane, start) = p.spans[i];
            let at = lane * p.len + start;
            flat[at..at + t.len()].to_vec()
        })
        .collect())
}
