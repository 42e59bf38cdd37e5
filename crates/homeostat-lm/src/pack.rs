//! Packing traces into the parallel lanes of a batch.
//!
//! Each lane is a concatenation of whole traces. A trace of n calls takes n positions:
//! inputs `start, c1 .. c(n-1)`, targets `c1 .. cn`, and its first position resets the
//! hidden state. Cutting lanes into chunks of `chunk` positions and carrying the hidden
//! state from one chunk to the next gives truncated BPTT that sees exactly what the
//! streaming scorer sees: every call predicted from its trace's whole prefix.

pub(crate) struct Packed {
    pub lanes: usize,
    /// Positions per lane, a multiple of the chunk length.
    pub len: usize,
    /// Lane-major `[lanes * len]` arrays.
    pub input: Vec<u32>,
    pub target: Vec<u32>,
    /// 0 where the hidden state restarts (trace start, padding).
    pub keep: Vec<f32>,
    /// 1 at real positions, 0 at padding.
    pub weight: Vec<f32>,
    /// Per trace (in the caller's indexing): lane and first position.
    pub spans: Vec<(usize, usize)>,
}

/// One chunk, time-major (`[t * lanes + lane]`), ready for tensors.
pub(crate) struct Chunk {
    pub input: Vec<u32>,
    pub target: Vec<u32>,
    pub keep: Vec<f32>,
    pub weight: Vec<f32>,
}

/// Packs `traces` (dense ids) in `order` into at most `lanes` lanes, each new trace
/// going to the currently shortest lane so lanes end up about equally long.
pub(crate) fn pack(
    traces: &[Vec<u16>],
    order: &[usize],
    lanes: usize,
    chunk: usize,
    bos: u32,
) -> Packed {
    let lanes = lanes.max(1);
    let mut lane_len = vec![0usize; lanes];
    let mut spans = vec![(0usize, 0usize); traces.len()];
    for &i in order {
        let (lane, _) = lane_len
            .iter()
            .enumerate()
            .min_by_key(|&(l, &n)| (n, l))
            .expect("at least one lane");
        spans[i] = (lane, lane_len[lane]);
        lane_len[lane] += traces[i].len();
    }
    let longest = lane_len.iter().copied().max().unwrap_or(0);
    let len = longest.div_ceil(chunk.max(1)).max(1) * chunk.max(1);
    let n = lanes * len;
    let mut p = Packed {
        lanes,
        len,
        input: vec![bos; n],
        target: vec![0; n],
        keep: vec![0.0; n],
        weight: vec![0.0; n],
        spans,
    };
    for &i in order {
        let (lane, start) = p.spans[i];
        let base = lane * len + start;
        for (k, &c) in traces[i].iter().enumerate() {
            let at = base + k;
            p.target[at] = u32::from(c);
            p.weight[at] = 1.0;
            if k > 0 {
                p.input[at] = u32::from(traces[i][k - 1]);
                p.keep[at] = 1.0;
            }
        }
    }
    p
}

impl Packed {
    pub(crate) fn chunks(&self, chunk: usize) -> usize {
        self.len / chunk
    }

    pub(crate) fn chunk(&self, c: usize, chunk: usize) -> Chunk {
        let n = chunk * self.lanes;
        let mut out = Chunk {
            input: Vec::with_capacity(n),
            target: Vec::with_capacity(n),
            keep: Vec::with_capacity(n),
            weight: Vec::with_capacity(n),
        };
        for t in c * chunk..(c + 1) * chunk {
            for lane in 0..self.lanes {
                let at = lane * self.len + t;
                out.input.push(self.input[at]);
                out.target.push(self.target[at]);
                out.keep.push(self.keep[at]);
                out.weight.push(self.weight[at]);
            }
        }
        out
    }
}
