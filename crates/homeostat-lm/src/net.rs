//! The recurrent net as candle tensors, for training and batched scoring.
//!
//! GRU equations as in PyTorch's `nn.GRU` (reset gate applied after the recurrent
//! product): `r = σ(x_r + h W_r + b_r)`, `z = σ(x_z + h W_z + b_z)`,
//! `n = tanh(x_n + r ⊙ (h W_n + b_n))`, `h' = n + z ⊙ (h - n)`.
//! LSTM equations as in PyTorch's `nn.LSTM` (gate order input, forget, cell, output):
//! `[i f g o] = x + h W + b`, `c' = σ(f) ⊙ c + σ(i) ⊙ tanh(g)`, `h' = σ(o) ⊙ tanh(c')`.
//! The first layer's input projection is folded into the per-id lookup table `emb`;
//! a layer above reads the hidden state below through `w_ih`, `b_ih`. A chunk runs
//! layer by layer (every step of layer 1, then layer 2 reading all of layer 1's
//! outputs through one matrix product), which gives the same numbers as step by step.

use candle_core::{DType, Device, Result, Tensor, Var, D};

use crate::pack::Chunk;
use crate::rng::Rng;
use crate::{Cell, Weights};

/// One upper layer's tensors: `w_ih`, `b_ih`, `w_hh`, `b_hh`.
pub(crate) struct UpperT {
    pub w_ih: Tensor,
    pub b_ih: Tensor,
    pub w_hh: Tensor,
    pub b_hh: Tensor,
}

pub(crate) struct Net {
    pub cell: Cell,
    pub hidden: usize,
    pub vocab_in: usize,
    pub vocab_out: usize,
    pub emb: Tensor,
    pub w_hh: Tensor,
    pub b_hh: Tensor,
    pub upper: Vec<UpperT>,
    pub out_w: Tensor,
    pub out_b: Tensor,
}

/// Trainable copies of a net's tensors.
pub(crate) struct Params {
    pub vars: Vec<Var>,
}

impl Net {
    /// PyTorch's RNN and Linear initialisation: uniform in ±1/sqrt(H).
    pub(crate) fn init(
        cell: Cell,
        layers: usize,
        hidden: usize,
        vocab_in: usize,
        vocab_out: usize,
        rng: &mut Rng,
    ) -> Weights {
        let a = 1.0 / (hidden as f32).sqrt();
        let data = Weights::shapes_for(cell, layers, hidden, vocab_in, vocab_out)
            .iter()
            .map(|(_, s)| (0..s[0] * s[1]).map(|_| rng.uniform(a)).collect())
            .collect();
        Weights::from_tensors(cell, hidden, vocab_in, vocab_out, data)
    }

    pub(crate) fn from_weights(w: &Weights, dev: &Device) -> Result<Net> {
        let (h, gh) = (w.hidden, w.cell.gates() * w.hidden);
        let upper = w
            .upper
            .iter()
            .map(|u| {
                Ok(UpperT {
                    w_ih: Tensor::from_slice(&u.w_ih, (h, gh), dev)?,
                    b_ih: Tensor::from_slice(&u.b_ih, gh, dev)?,
                    w_hh: Tensor::from_slice(&u.w_hh, (h, gh), dev)?,
                    b_hh: Tensor::from_slice(&u.b_hh, gh, dev)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Net {
            cell: w.cell,
            hidden: h,
            vocab_in: w.vocab_in,
            vocab_out: w.vocab_out,
            emb: Tensor::from_slice(&w.emb, (w.vocab_in, gh), dev)?,
            w_hh: Tensor::from_slice(&w.w_hh, (h, gh), dev)?,
            b_hh: Tensor::from_slice(&w.b_hh, gh, dev)?,
            upper,
            out_w: Tensor::from_slice(&w.out_w, (h, w.vocab_out), dev)?,
            out_b: Tensor::from_slice(&w.out_b, w.vocab_out, dev)?,
        })
    }

    fn tensors_mut(&mut self) -> Vec<&mut Tensor> {
        let mut v = vec![&mut self.emb, &mut self.w_hh, &mut self.b_hh];
        for u in &mut self.upper {
            v.extend([&mut u.w_ih, &mut u.b_ih, &mut u.w_hh, &mut u.b_hh]);
        }
        v.push(&mut self.out_w);
        v.push(&mut self.out_b);
        v
    }

    fn tensors(&self) -> Vec<&Tensor> {
        let mut v = vec![&self.emb, &self.w_hh, &self.b_hh];
        for u in &self.upper {
            v.extend([&u.w_ih, &u.b_ih, &u.w_hh, &u.b_hh]);
        }
        v.push(&self.out_w);
        v.push(&self.out_b);
        v
    }

    /// Makes the tensors trainable; the net then reads the variables' storage, so
    /// optimiser steps are seen by the next forward pass.
    pub(crate) fn trainable(&mut self) -> Result<Params> {
        let mut vars = vec![];
        for t in self.tensors_mut() {
            let v = Var::from_tensor(t)?;
            *t = v.as_tensor().clone();
            vars.push(v);
        }
        Ok(Params { vars })
    }

    /// A view of the same storage that records no gradients.
    pub(crate) fn detached(&self) -> Net {
        Net {
            cell: self.cell,
            hidden: self.hidden,
            vocab_in: self.vocab_in,
            vocab_out: self.vocab_out,
            emb: self.emb.detach(),
            w_hh: self.w_hh.detach(),
            b_hh: self.b_hh.detach(),
            upper: self
                .upper
                .iter()
                .map(|u| UpperT {
                    w_ih: u.w_ih.detach(),
                    b_ih: u.b_ih.detach(),
                    w_hh: u.w_hh.detach(),
                    b_hh: u.b_hh.detach(),
                })
                .collect(),
            out_w: self.out_w.detach(),
            out_b: self.out_b.detach(),
        }
    }

    pub(crate) fn to_weights(&self) -> Result<Weights> {
        let data = self
            .tensors()
            .into_iter()
            .map(|t| t.flatten_all()?.to_vec1::<f32>())
            .collect::<Result<Vec<_>>>()?;
        Ok(Weights::from_tensors(
            self.cell,
            self.hidden,
            self.vocab_in,
            self.vocab_out,
            data,
        ))
    }

    pub(crate) fn layers(&self) -> usize {
        self.upper.len() + 1
    }

    /// The zero state of `lanes` lanes: per layer `h` (and the LSTM's `c`).
    pub(crate) fn zeros(&self, lanes: usize, dev: &Device) -> Result<Vec<Tensor>> {
        (0..self.layers() * self.cell.states())
            .map(|_| Tensor::zeros((lanes, self.hidden), DType::F32, dev))
            .collect()
    }

    /// Runs one chunk of `t` steps over `lanes` lanes from `state` (as from
    /// [`Net::zeros`]); returns each position's NLL (time-major `[t * lanes]`) and the
    /// last state. `dropout`, in training only, holds one `[t, lanes, H]` mask per layer
    /// (0 or 1/(1-p)) applied to that layer's outputs.
    pub(crate) fn forward(
        &self,
        c: &Chunk,
        t: usize,
        lanes: usize,
        state: &[Tensor],
        dropout: Option<&[Tensor]>,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        let dev = state[0].device();
        let hd = self.hidden;
        let gh = self.cell.gates() * hd;
        let input = Tensor::from_slice(&c.input, t * lanes, dev)?;
        let target = Tensor::from_slice(&c.target, (t * lanes, 1), dev)?;
        let keep = Tensor::from_slice(&c.keep, (t, lanes, 1), dev)?;
        let mut x = self.emb.index_select(&input, 0)?.reshape((t, lanes, gh))?;
        let mut last = Vec::with_capacity(state.len());
        let mut below = None;
        let per = self.cell.states();
        for l in 0..self.layers() {
            let (w_hh, b_hh) = if l == 0 {
                (&self.w_hh, &self.b_hh)
            } else {
                let u = &self.upper[l - 1];
                let lower: &Tensor = below.as_ref().expect("layer below ran");
                x = lower
                    .reshape((t * lanes, hd))?
                    .matmul(&u.w_ih)?
                    .broadcast_add(&u.b_ih)?
                    .reshape((t, lanes, gh))?;
                (&u.w_hh, &u.b_hh)
            };
            let mut h = state[l * per].clone();
            let mut cs = (per == 2).then(|| state[l * per + 1].clone());
            let mut hs = Vec::with_capacity(t);
            for s in 0..t {
                let k = keep.get(s)?;
                h = h.broadcast_mul(&k)?;
                let g = h.matmul(w_hh)?.broadcast_add(b_hh)?;
                let xs = x.get(s)?;
                match self.cell {
                    Cell::Gru => {
                        let rz = candle_nn::ops::sigmoid(
                            &(xs.narrow(1, 0, 2 * hd)? + g.narrow(1, 0, 2 * hd)?)?,
                        )?;
                        let r = rz.narrow(1, 0, hd)?;
                        let z = rz.narrow(1, hd, hd)?;
                        let n = (xs.narrow(1, 2 * hd, hd)? + (r * g.narrow(1, 2 * hd, hd)?)?)?
                            .tanh()?;
                        h = (&n + (z * (&h - &n)?)?)?;
                    }
                    Cell::Lstm => {
                        let c0 = cs.take().expect("lstm cell state").broadcast_mul(&k)?;
                        let a = (xs + g)?;
                        let sg = candle_nn::ops::sigmoid(&a)?;
                        let i = sg.narrow(1, 0, hd)?;
                        let f = sg.narrow(1, hd, hd)?;
                        let o = sg.narrow(1, 3 * hd, hd)?;
                        let cand = a.narrow(1, 2 * hd, hd)?.tanh()?;
                        let c1 = ((f * c0)? + (i * cand)?)?;
                        h = (o * c1.tanh()?)?;
                        cs = Some(c1);
                    }
                }
                hs.push(h.clone());
            }
            let mut out = Tensor::stack(&hs, 0)?;
            if let Some(masks) = dropout {
                out = (out * &masks[l])?;
            }
            below = Some(out);
            last.push(h);
            if let Some(c1) = cs {
                last.push(c1);
            }
        }
        let top = below
            .expect("at least one layer")
            .reshape((t * lanes, hd))?;
        let logits = top.matmul(&self.out_w)?.broadcast_add(&self.out_b)?;
        let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
        let nll = logp.gather(&target, 1)?.squeeze(1)?.neg()?;
        Ok((nll, last))
    }
}
