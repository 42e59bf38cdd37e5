//! Locality frame count (LFC) and per-trace scores, shared by every model.
//!
//! A single foreign window is weak evidence; attacks show up as clusters of them. pH
//! therefore counts the anomalies among the last `L` test units (windows for the
//! stide family, calls for lookahead pairs and Markov) and responds in proportion to
//! that count. A trace's score is the largest LFC it reached, with the plain mismatch
//! rate as a second, whole-trace score.

use serde::{Deserialize, Serialize};

/// One anomalous test unit: the window (or call) ending at call index `pos`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Anomaly {
    /// Index of the call that completed the anomalous window (0-based).
    pub pos: u32,
    /// How many checks failed there: missing pairs for lookahead pairs, 1 otherwise.
    pub misses: u32,
}

/// The streaming locality frame of one task: anomalies among its last `size` units.
#[derive(Debug, Clone)]
pub struct LocalityFrame {
    bits: Vec<u64>,
    size: usize,
    next: usize,
    count: u32,
}

impl LocalityFrame {
    /// A frame of `size` units (at least 1).
    pub fn new(size: usize) -> Self {
        let size = size.max(1);
        LocalityFrame {
            bits: vec![0; size.div_ceil(64)],
            size,
            next: 0,
            count: 0,
        }
    }

    /// Records the next unit and returns the LFC including it.
    #[inline]
    pub fn push(&mut self, anomalous: bool) -> u32 {
        let (word, bit) = (self.next / 64, self.next % 64);
        let old = (self.bits[word] >> bit) & 1 == 1;
        if old != anomalous {
            self.bits[word] ^= 1 << bit;
            if anomalous {
                self.count += 1;
            } else {
                self.count -= 1;
            }
        }
        self.next += 1;
        if self.next == self.size {
            self.next = 0;
        }
        self.count
    }

    /// The current count.
    pub fn lfc(&self) -> u32 {
        self.count
    }

    /// The frame size `L`.
    pub fn size(&self) -> usize {
        self.size
    }
}

/// Largest number of anomalies inside any `l` consecutive units.
///
/// Works from the anomaly positions alone: the count only rises at an anomaly, so the
/// maximum is reached at one of them. Positions must be ascending.
pub fn max_lfc(anomalies: &[Anomaly], l: usize) -> u32 {
    let mut best = 0usize;
    let mut lo = 0usize;
    for (hi, a) in anomalies.iter().enumerate() {
        while u64::from(anomalies[lo].pos) + (l as u64) <= u64::from(a.pos) {
            lo += 1;
        }
        best = best.max(hi - lo + 1);
    }
    best as u32
}

/// The first anomaly at which the LFC reaches `threshold` (an online alarm), if any.
pub fn first_alarm(anomalies: &[Anomaly], l: usize, threshold: u32) -> Option<Anomaly> {
    if threshold == 0 {
        return anomalies.first().copied();
    }
    let mut lo = 0usize;
    for (hi, a) in anomalies.iter().enumerate() {
        while u64::from(anomalies[lo].pos) + (l as u64) <= u64::from(a.pos) {
            lo += 1;
        }
        if (hi - lo + 1) as u32 >= threshold {
            return Some(*a);
        }
    }
    None
}

/// What one trace scored under one model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct TraceScore {
    /// System calls in the trace.
    pub calls: u64,
    /// Test units (windows or calls) that were checked.
    pub units: u64,
    /// Anomalous units.
    pub mismatches: u64,
    /// Failed checks summed over units (missing pairs for lookahead pairs).
    pub misses: u64,
    /// Largest locality frame count reached.
    pub max_lfc: u32,
}

impl TraceScore {
    /// Summarises the anomalies a model reported for a trace of `calls` calls.
    pub fn new(calls: u64, units: u64, anomalies: &[Anomaly], locality: usize) -> Self {
        TraceScore {
            calls,
            units,
            mismatches: anomalies.len() as u64,
            misses: anomalies.iter().map(|a| u64::from(a.misses)).sum(),
            max_lfc: max_lfc(anomalies, locality),
        }
    }

    /// Mismatches per test unit (0 for an empty trace).
    pub fn rate(&self) -> f64 {
        if self.units == 0 {
            0.0
        } else {
            self.mismatches as f64 / self.units as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(pos: &[u32]) -> Vec<Anomaly> {
        pos.iter().map(|&pos| Anomaly { pos, misses: 1 }).collect()
    }

    #[test]
    fn max_lfc_by_hand() {
        // L = 5: positions 0,1,4 lie within 5 units; 10,11,12,14 lie within 5 units.
        let a = at(&[0, 1, 4, 10, 11, 12, 14, 30]);
        assert_eq!(max_lfc(&a, 5), 4);
        assert_eq!(max_lfc(&a, 1), 1);
        assert_eq!(max_lfc(&a, 100), 8);
        assert_eq!(max_lfc(&[], 20), 0);
    }

    #[test]
    fn first_alarm_by_hand() {
        let a = at(&[0, 1, 4, 10, 11, 12, 14, 30]);
        assert_eq!(first_alarm(&a, 5, 3).map(|a| a.pos), Some(4));
        assert_eq!(first_alarm(&a, 5, 4).map(|a| a.pos), Some(14));
        assert_eq!(first_alarm(&a, 5, 5), None);
        assert_eq!(first_alarm(&a, 5, 1).map(|a| a.pos), Some(0));
    }

    #[test]
    fn streaming_frame_matches_batch() {
        let flags = [1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 1, 1, 1, 0, 1, 0];
        let mut f = LocalityFrame::new(5);
        let mut best = 0;
        let mut pos = vec![];
        for (i, &x) in flags.iter().enumerate() {
            best = best.max(f.push(x == 1));
            if x == 1 {
                pos.push(i as u32);
            }
        }
        assert_eq!(best, max_lfc(&at(&pos), 5));
        assert_eq!(best, 4);
    }

    #[test]
    fn rate_of_empty_trace_is_zero() {
        let s = TraceScore::new(0, 0, &[], 20);
        assert_eq!(s.rate(), 0.0);
    }
}
