//! Per-call NLL and the trace scores built from it, streaming and batched.

use candle_core::Device;
use homeostat_core::{LocalityFrame, TraceScore};
use serde::{Deserialize, Serialize};

use crate::net::Net;
use crate::pack::pack;
use crate::{Cell, Lm, LmError};

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

/// One task's streaming state: the hidden vectors (and the LSTM's cell states) of
/// every layer and the running trace scores. Its memory is fixed at creation (layers,
/// hidden size, output size, frame size).
#[derive(Debug, Clone)]
pub struct LmState {
    /// `[layers * H]`: each layer's hidden vector.
    h: Vec<f32>,
    /// `[layers * H]`: each layer's cell state (empty for the GRU).
    c: Vec<f32>,
    /// `[G*H]`: the current layer's input pre-activations.
    x: Vec<f32>,
    /// `[G*H]`: the current layer's recurrent pre-activations.
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

/// `out += v M` for a row-major `M` of `v.len()` rows and `out.len()` columns.
fn add_vec_mat(out: &mut [f32], v: &[f32], m: &[f32]) {
    let cols = out.len();
    for (&vi, row) in v.iter().zip(m.chunks_exact(cols)) {
        for (o, &w) in out.iter_mut().zip(row) {
            *o += vi * w;
        }
    }
}

impl Lm {
    /// A fresh task: the state after the start-of-trace input.
    pub fn start(&self) -> LmState {
        let w = &self.weights;
        let (hd, gh) = (w.hidden, w.cell.gates() * w.hidden);
        let layers = w.layers();
        let mut s = LmState {
            h: vec![0.0; layers * hd],
            c: vec![0.0; if w.cell == Cell::Lstm { layers * hd } else { 0 }],
            x: vec![0.0; gh],
            gh: vec![0.0; gh],
            logits: vec![0.0; w.vocab_out],
            acc: Acc::new(self.threshold, self.config.locality),
        };
        self.step(&mut s, self.bos());
        s
    }

    fn step(&self, s: &mut LmState, input: usize) {
        let w = &self.weights;
        let hd = w.hidden;
        let gh = w.cell.gates() * hd;
        s.x.copy_from_slice(&w.emb[input * gh..(input + 1) * gh]);
        for l in 0..w.layers() {
            let (w_hh, b_hh) = if l == 0 {
                (&w.w_hh, &w.b_hh)
            } else {
                let u = &w.upper[l - 1];
                s.x.copy_from_slice(&u.b_ih);
                add_vec_mat(&mut s.x, &s.h[(l - 1) * hd..l * hd], &u.w_ih);
                (&u.w_hh, &u.b_hh)
            };
            let h = &mut s.h[l * hd..(l + 1) * hd];
            s.gh.copy_from_slice(b_hh);
            add_vec_mat(&mut s.gh, h, w_hh);
            let (x, g) = (&s.x, &s.gh);
            match w.cell {
                Cell::Gru => {
                    for j in 0..hd {
                        let r = sigmoid(x[j] + g[j]);
                        let z = sigmoid(x[hd + j] + g[hd + j]);
                        let n = (x[2 * hd + j] + r * g[2 * hd + j]).tanh();
                        h[j] = n + z * (h[j] - n);
                    }
                }
                Cell::Lstm => {
                    let c = &mut s.c[l * hd..(l + 1) * hd];
                    for j in 0..hd {
                        let i = sigmoid(x[j] + g[j]);
                        let f = sigmoid(x[hd + j] + g[hd + j]);
                        let cand = (x[2 * hd + j] + g[2 * hd + j]).tanh();
                        let o = sigmoid(x[3 * hd + j] + g[3 * hd + j]);
                        c[j] = f * c[j] + i * cand;
                        h[j] = o * c[j].tanh();
                    }
                }
            }
        }
    }

    fn nll_of(&self, s: &mut LmState, target: usize) -> f32 {
        let w = &self.weights;
        let top = (w.layers() - 1) * w.hidden;
        s.logits.copy_from_slice(&w.out_b);
        add_vec_mat(&mut s.logits, &s.h[top..], &w.out_w);
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
        let (nll, last) = net.forward(&chunk, SCORE_CHUNK, p.lanes, &h, None)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{LmConfig, TrainStats, Upper, Weights};
    use homeostat_core::alphabet::Alphabet;

    fn sig(x: f64) -> f64 {
        1.0 / (1.0 + (-x).exp())
    }

    /// A one-unit LSTM over a one-call alphabet (ids: 0 unknown, 1 the call 7, 2
    /// start), with every weight written out, so one step can be worked by hand.
    fn tiny_lstm(layers: usize) -> Lm {
        let mut alphabet = Alphabet::new();
        alphabet.intern(7);
        let upper = (1..layers)
            .map(|_| Upper {
                w_ih: vec![0.9, -0.4, 1.1, 0.3],
                b_ih: vec![0.05, 0.1, -0.1, 0.2],
                w_hh: vec![0.2, 0.3, -0.6, 0.4],
                b_hh: vec![0.0, 0.5, 0.1, -0.3],
            })
            .collect();
        let weights = Weights {
            cell: Cell::Lstm,
            hidden: 1,
            vocab_in: 3,
            vocab_out: 2,
            // Rows: unknown, call 7, start; columns: i, f, g, o.
            emb: vec![
                0.0, 0.0, 0.0, 0.0, //
                0.5, -0.2, 0.8, 0.1, //
                -0.3, 0.4, 0.2, 0.6,
            ],
            w_hh: vec![0.7, -0.5, 0.3, 0.2],
            b_hh: vec![0.1, 0.2, -0.1, 0.0],
            upper,
            out_w: vec![-1.0, 2.0],
            out_b: vec![0.3, -0.1],
        };
        Lm {
            alphabet,
            weights,
            threshold: 1.0,
            config: LmConfig {
                cell: Cell::Lstm,
                layers,
                hidden: 1,
                ..LmConfig::default()
            },
            stats: TrainStats::default(),
            held_out: vec![],
        }
    }

    /// One LSTM step by the textbook equations: (h, c) from input pre-activations
    /// `x` (i, f, g, o), recurrent weights `w`, biases `b`.
    fn lstm(x: [f64; 4], w: [f64; 4], b: [f64; 4], h: f64, c: f64) -> (f64, f64) {
        let a: Vec<f64> = (0..4).map(|k| x[k] + h * w[k] + b[k]).collect();
        let c1 = sig(a[1]) * c + sig(a[0]) * a[2].tanh();
        (sig(a[3]) * c1.tanh(), c1)
    }

    /// NLL of output id `y` from the top hidden value.
    fn nll(h: f64, y: usize) -> f64 {
        let l = [0.3 - h, -0.1 + 2.0 * h];
        let m = l[0].max(l[1]);
        m + ((l[0] - m).exp() + (l[1] - m).exp()).ln() - l[y]
    }

    #[test]
    fn one_layer_lstm_matches_a_hand_computation() {
        let lm = tiny_lstm(1);
        let (w, b) = ([0.7, -0.5, 0.3, 0.2], [0.1, 0.2, -0.1, 0.0]);
        // Start input, then the call 7 (id 1), then a call never seen (id 0).
        let (h1, c1) = lstm([-0.3, 0.4, 0.2, 0.6], w, b, 0.0, 0.0);
        let (h2, c2) = lstm([0.5, -0.2, 0.8, 0.1], w, b, h1, c1);
        let mut s = lm.start();
        let got1 = lm.push(&mut s, 7);
        let got2 = lm.push(&mut s, 99);
        assert!((f64::from(got1) - nll(h1, 1)).abs() < 1e-6, "{got1}");
        assert!((f64::from(got2) - nll(h2, 0)).abs() < 1e-6, "{got2}");
        assert!((f64::from(s.h[0]) - lstm([0.0; 4], w, b, h2, c2).0).abs() < 1e-6);
    }

    #[test]
    fn two_layer_lstm_feeds_the_lower_hidden_state_up() {
        let lm = tiny_lstm(2);
        let (w1, b1) = ([0.7, -0.5, 0.3, 0.2], [0.1, 0.2, -0.1, 0.0]);
        let (wi, bi) = ([0.9, -0.4, 1.1, 0.3], [0.05, 0.1, -0.1, 0.2]);
        let (w2, b2) = ([0.2, 0.3, -0.6, 0.4], [0.0, 0.5, 0.1, -0.3]);
        let up = |h_below: f64| -> [f64; 4] {
            let mut x = [0.0; 4];
            for k in 0..4 {
                x[k] = h_below * wi[k] + bi[k];
            }
            x
        };
        let (a1, ac1) = lstm([-0.3, 0.4, 0.2, 0.6], w1, b1, 0.0, 0.0);
        let (b1h, bc1) = lstm(up(a1), w2, b2, 0.0, 0.0);
        let (a2, _) = lstm([0.5, -0.2, 0.8, 0.1], w1, b1, a1, ac1);
        let (b2h, _) = lstm(up(a2), w2, b2, b1h, bc1);
        let mut s = lm.start();
        let got1 = lm.push(&mut s, 7);
        let got2 = lm.push(&mut s, 7);
        assert!((f64::from(got1) - nll(b1h, 1)).abs() < 1e-6, "{got1}");
        assert!((f64::from(got2) - nll(b2h, 1)).abs() < 1e-6, "{got2}");
    }

    #[test]
    fn batched_path_agrees_on_the_hand_made_nets() {
        for layers in [1, 2] {
            let lm = tiny_lstm(layers);
            let traces: Vec<Vec<u32>> = vec![vec![7, 7, 99, 7], vec![], vec![99], vec![7; 40]];
            let refs: Vec<&[u32]> = traces.iter().map(Vec::as_slice).collect();
            for lanes in [1, 3] {
                let batched = lm.nll_traces(&refs, lanes).unwrap();
                for (t, b) in traces.iter().zip(&batched) {
                    let mut s = lm.start();
                    let streamed: Vec<f32> = t.iter().map(|&c| lm.push(&mut s, c)).collect();
                    assert_eq!(streamed.len(), b.len());
                    for (x, y) in streamed.iter().zip(b) {
                        assert!((x - y).abs() < 1e-5, "{layers} layers: {x} vs {y}");
                    }
                }
            }
        }
    }
}
