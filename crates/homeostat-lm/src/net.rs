//! The GRU as candle tensors, for training and batched scoring.
//!
//! Equations as in PyTorch's `nn.GRU` (reset gate applied after the recurrent
//! product), with the input projection folded into the per-id lookup table:
//! `r = σ(x_r + h W_r + b_r)`, `z = σ(x_z + h W_z + b_z)`,
//! `n = tanh(x_n + r ⊙ (h W_n + b_n))`, `h' = n + z ⊙ (h - n)`.

use candle_core::{DType, Device, Result, Tensor, Var, D};

use crate::pack::Chunk;
use crate::rng::Rng;
use crate::Weights;

pub(crate) struct Net {
    pub hidden: usize,
    pub vocab_in: usize,
    pub vocab_out: usize,
    pub emb: Tensor,
    pub w_hh: Tensor,
    pub b_hh: Tensor,
    pub out_w: Tensor,
    pub out_b: Tensor,
}

/// Trainable copies of a net's tensors.
pub(crate) struct Params {
    pub vars: Vec<Var>,
}

impl Net {
    /// PyTorch's GRU and Linear initialisation: uniform in ±1/sqrt(fan).
    pub(crate) fn init(hidden: usize, vocab_in: usize, vocab_out: usize, rng: &mut Rng) -> Weights {
        let a = 1.0 / (hidden as f32).sqrt();
        let mut fill = |n: usize, a: f32| (0..n).map(|_| rng.uniform(a)).collect::<Vec<f32>>();
        Weights {
            hidden,
            vocab_in,
            vocab_out,
            emb: fill(vocab_in * 3 * hidden, a),
            w_hh: fill(hidden * 3 * hidden, a),
            b_hh: fill(3 * hidden, a),
            out_w: fill(hidden * vocab_out, a),
            out_b: fill(vocab_out, a),
        }
    }

    pub(crate) fn from_weights(w: &Weights, dev: &Device) -> Result<Net> {
        let h = w.hidden;
        Ok(Net {
            hidden: h,
            vocab_in: w.vocab_in,
            vocab_out: w.vocab_out,
            emb: Tensor::from_slice(&w.emb, (w.vocab_in, 3 * h), dev)?,
            w_hh: Tensor::from_slice(&w.w_hh, (h, 3 * h), dev)?,
            b_hh: Tensor::from_slice(&w.b_hh, 3 * h, dev)?,
            out_w: Tensor::from_slice(&w.out_w, (h, w.vocab_out), dev)?,
            out_b: Tensor::from_slice(&w.out_b, w.vocab_out, dev)?,
        })
    }

    /// Makes the tensors trainable; the net then reads the variables' storage, so
    /// optimiser steps are seen by the next forward pass.
    pub(crate) fn trainable(&mut self) -> Result<Params> {
        let mut vars = vec![];
        for t in [
            &mut self.emb,
            &mut self.w_hh,
            &mut self.b_hh,
            &mut self.out_w,
            &mut self.out_b,
        ] {
            let v = Var::from_tensor(t)?;
            *t = v.as_tensor().clone();
            vars.push(v);
        }
        Ok(Params { vars })
    }

    /// A view of the same storage that records no gradients.
    pub(crate) fn detached(&self) -> Net {
        Net {
            hidden: self.hidden,
            vocab_in: self.vocab_in,
            vocab_out: self.vocab_out,
            emb: self.emb.detach(),
            w_hh: self.w_hh.detach(),
            b_hh: self.b_hh.detach(),
            out_w: self.out_w.detach(),
            out_b: self.out_b.detach(),
        }
    }

    pub(crate) fn to_weights(&self) -> Result<Weights> {
        let v = |t: &Tensor| t.flatten_all()?.to_vec1::<f32>();
        Ok(Weights {
            hidden: self.hidden,
            vocab_in: self.vocab_in,
            vocab_out: self.vocab_out,
            emb: v(&self.emb)?,
            w_hh: v(&self.w_hh)?,
            b_hh: v(&self.b_hh)?,
            out_w: v(&self.out_w)?,
            out_b: v(&self.out_b)?,
        })
    }

    pub(crate) fn zeros(&self, lanes: usize, dev: &Device) -> Result<Tensor> {
        Tensor::zeros((lanes, self.hidden), DType::F32, dev)
    }

    /// Runs one chunk of `t` steps over `lanes` lanes from state `h0`; returns each
    /// position's NLL (time-major `[t * lanes]`) and the last state.
    pub(crate) fn forward(
        &self,
        c: &Chunk,
        t: usize,
        lanes: usize,
        h0: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let dev = h0.device();
        let hd = self.hidden;
        let input = Tensor::from_slice(&c.input, t * lanes, dev)?;
        let target = Tensor::from_slice(&c.target, (t * lanes, 1), dev)?;
        let keep = Tensor::from_slice(&c.keep, (t, lanes, 1), dev)?;
        let x = self
            .emb
            .index_select(&input, 0)?
            .reshape((t, lanes, 3 * hd))?;
        let mut h = h0.clone();
        let mut hs = Vec::with_capacity(t);
        for s in 0..t {
            h = h.broadcast_mul(&keep.get(s)?)?;
            let gh = h.matmul(&self.w_hh)?.broadcast_add(&self.b_hh)?;
            let xs = x.get(s)?;
            let rz =
                candle_nn::ops::sigmoid(&(xs.narrow(1, 0, 2 * hd)? + gh.narrow(1, 0, 2 * hd)?)?)?;
            let r = rz.narrow(1, 0, hd)?;
            let z = rz.narrow(1, hd, hd)?;
            let n = (xs.narrow(1, 2 * hd, hd)? + (r * gh.narrow(1, 2 * hd, hd)?)?)?.tanh()?;
            h = (&n + (z * (&h - &n)?)?)?;
            hs.push(h.clone());
        }
        let hs = Tensor::stack(&hs, 0)?.reshape((t * lanes, hd))?;
        let logits = hs.matmul(&self.out_w)?.broadcast_add(&self.out_b)?;
        let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
        let nll = logp.gather(&target, 1)?.squeeze(1)?.neg()?;
        Ok((nll, h))
    }
}
