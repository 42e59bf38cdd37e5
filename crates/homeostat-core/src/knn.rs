//! kNN on call-frequency vectors: a whole-trace model.
//!
//! The sequence models judge a trace by its rarest short windows; a program doing
//! something else entirely (adding a user, running a shell) can be made of common
//! windows in uncommon proportions. Here each trace is a bag of its call n-grams
//! (orders 1..=`n`), weighted TF-IDF style (Liao and Vemuri 2002 used calls alone;
//! n-grams add order), L2-normalised; a trace's score is the cosine distance to its
//! `k` nearest normal training traces (`distance`). A second score, `relative`,
//! divides the distance to the nearest training trace by that trace's own distance
//! to its nearest other training trace (plus the mean of those, which keeps it
//! finite for duplicated traces), as the local outlier factor does: normal
//! behaviour is dense in some regions (short service traces) and sparse in others,
//! and a fixed distance means more in a dense region.
//!
//! Weights: term frequency raw, sub-linear `1 + ln tf`, or binary; inverse document
//! frequency `ln((1 + N) / (1 + df)) + 1` over the `N` training traces (an n-gram no
//! training trace has gets `df = 0`, the largest weight, so unseen behaviour pulls a
//! trace away from every neighbour). The defaults were chosen by cross-validation on
//! training traces only (docs/models.md).
//!
//! Streaming keeps one count map per open trace: n-grams seen in training (a bounded
//! vocabulary) and at most [`MAX_UNSEEN`] distinct unseen ones, so memory stays
//! bounded whatever a process does; beyond that cap each further unseen n-gram counts
//! as a distinct singleton, which whole-trace scoring does identically.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap as StdHashMap;
use std::hash::BuildHasherDefault;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::classic::decode_all;
use crate::detector::{
    Detector, DetectorBuilder, DetectorError, Params, Progress, TraceResult, TraceStream,
};
use crate::model::Scratch;
use crate::registry::Entry;

/// Maps with a fixed hash seed: floating-point sums over a trace's n-grams follow the
/// map's order, and a per-process random seed made scores (and AUC ties) differ in
/// the last bits from run to run.
type HashMap<K, V> = StdHashMap<K, V, BuildHasherDefault<DefaultHasher>>;

/// Largest n-gram order.
pub const MAX_ORDER: usize = 5;
/// Distinct unseen n-grams a trace's count map keeps.
pub const MAX_UNSEEN: usize = 1 << 16;

/// Term-frequency weighting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Tf {
    /// The count itself.
    Raw,
    /// `1 + ln(count)`: repeats matter less than presence.
    Log,
    /// 1 when present.
    Bool,
}

impl std::str::FromStr for Tf {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "raw" => Ok(Tf::Raw),
            "log" | "sublinear" => Ok(Tf::Log),
            "bool" | "binary" => Ok(Tf::Bool),
            _ => Err(()),
        }
    }
}

impl Tf {
    fn name(self) -> &'static str {
        match self {
            Tf::Raw => "raw",
            Tf::Log => "log",
            Tf::Bool => "bool",
        }
    }
    #[inline]
    fn weight(self, count: u32) -> f64 {
        match self {
            Tf::Raw => f64::from(count),
            Tf::Log => 1.0 + f64::from(count).ln(),
            Tf::Bool => 1.0,
        }
    }
}

/// The kNN configuration.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct KnnConfig {
    /// Neighbours averaged.
    pub k: usize,
    /// Largest n-gram order (1 = calls alone).
    pub n: usize,
    /// Term-frequency weighting.
    pub tf: Tf,
    /// Whether to weight by inverse document frequency.
    pub idf: bool,
}

impl Default for KnnConfig {
    /// Chosen by cross-validation on ADFA-LD's training traces (docs/models.md).
    fn default() -> Self {
        KnnConfig {
            k: 1,
            n: 1,
            tf: Tf::Bool,
            idf: true,
        }
    }
}

impl KnnConfig {
    /// Reads `k`, `n`, `tf`, `idf` from parameters over the defaults.
    pub fn from_params(p: &Params) -> Result<Self, DetectorError> {
        let d = KnnConfig::default();
        let tf = match p.raw("tf") {
            None => d.tf,
            Some(v) => v.parse().map_err(|_| DetectorError::Param {
                model: "knn".into(),
                msg: format!("tf={v} (expected raw, log or bool)"),
            })?,
        };
        let c = KnnConfig {
            k: p.get("knn", "k", d.k)?,
            n: p.get("knn", "n", d.n)?,
            tf,
            idf: p.get("knn", "idf", d.idf)?,
        };
        c.validate()?;
        Ok(c)
    }

    fn validate(&self) -> Result<(), DetectorError> {
        let err = |msg: String| {
            Err(DetectorError::Param {
                model: "knn".into(),
                msg,
            })
        };
        if self.k == 0 || self.k > 1000 {
            return err(format!("k={} out of range 1..=1000", self.k));
        }
        if self.n == 0 || self.n > MAX_ORDER {
            return err(format!("n={} out of range 1..={MAX_ORDER}", self.n));
        }
        Ok(())
    }
}

/// An n-gram's key: order in the top bits, then up to five 12-bit call numbers
/// (call numbers above 4095 share a bucket; no architecture has that many calls).
#[inline]
fn gram_key(order: usize, last: &[u32; MAX_ORDER]) -> u64 {
    let mut key = order as u64;
    for &c in &last[..order] {
        key = (key << 12) | u64::from(c.min(4095));
    }
    key
}

/// Counts of one trace's n-grams, the unit both training and scoring work on.
#[derive(Debug, Clone, Default)]
struct Bag {
    counts: HashMap<u64, u32>,
    /// Calls so far, newest first.
    last: [u32; MAX_ORDER],
    calls: u64,
    /// Unseen n-grams past the cap, each a singleton.
    overflow: u64,
}

impl Bag {
    /// Adds a call; `keep` says whether a new n-gram key may get its own entry.
    #[inline]
    fn push(&mut self, call: u32, n: usize, keep: &dyn Fn(u64, usize) -> bool) {
        self.last.copy_within(0..MAX_ORDER - 1, 1);
        self.last[0] = call;
        self.calls += 1;
        let have = (self.calls as usize).min(n);
        for order in 1..=have {
            let key = gram_key(order, &self.last);
            if let Some(c) = self.counts.get_mut(&key) {
                *c += 1;
            } else if keep(key, self.counts.len()) {
                self.counts.insert(key, 1);
            } else {
                self.overflow += 1;
            }
        }
    }
}

/// A trained training-trace index.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Stored {
    config: KnnConfig,
    calls: u64,
    /// Vocabulary: n-gram key and its document frequency.
    vocab: Vec<(u64, u32)>,
    /// Per training trace, its n-gram counts as (vocabulary index, count).
    traces: Vec<Vec<(u32, u32)>>,
}

/// The kNN detector.
#[derive(Debug, Clone)]
pub struct Knn {
    stored: Stored,
    index: HashMap<u64, u32>,
    idf: Vec<f64>,
    unseen_idf: f64,
    /// Each training trace's distance to its nearest other training trace.
    own: Vec<f64>,
    /// Mean of `own`: the scale that keeps `relative` finite when a training trace
    /// has an exact duplicate (distance 0). Not the median: in real data most
    /// traces can have a duplicate, and the median is then 0.
    own_scale: f64,
    /// Postings per vocabulary term: (training trace, normalised weight).
    postings: Vec<Vec<(u32, f64)>>,
}

impl Knn {
    fn from_stored(stored: Stored) -> Result<Self, String> {
        let cfg = stored.config;
        cfg.validate().map_err(|e| e.to_string())?;
        let nt = stored.traces.len();
        if nt == 0 {
            return Err("no training traces".into());
        }
        let vocab_len = stored.vocab.len();
        let mut index = HashMap::with_capacity_and_hasher(vocab_len, Default::default());
        for (i, &(key, df)) in stored.vocab.iter().enumerate() {
            if df == 0 || df as usize > nt || index.insert(key, i as u32).is_some() {
                return Err(format!("invalid vocabulary entry {i}"));
            }
        }
        let idf_of = |df: f64| {
            if cfg.idf {
                ((1.0 + nt as f64) / (1.0 + df)).ln() + 1.0
            } else {
                1.0
            }
        };
        let idf: Vec<f64> = stored
            .vocab
            .iter()
            .map(|&(_, df)| idf_of(df.into()))
            .collect();
        let mut postings: Vec<Vec<(u32, f64)>> = vec![vec![]; vocab_len];
        let mut weighted: Vec<Vec<(u32, f64)>> = Vec::with_capacity(nt);
        for (t, terms) in stored.traces.iter().enumerate() {
            let mut norm = 0.0;
            for &(i, c) in terms {
                if i as usize >= vocab_len || c == 0 {
                    return Err(format!("invalid count in training trace {t}"));
                }
                let w = cfg.tf.weight(c) * idf[i as usize];
                norm += w * w;
            }
            let norm = norm.sqrt().max(f64::MIN_POSITIVE);
            let mut ws = Vec::with_capacity(terms.len());
            for &(i, c) in terms {
                let w = cfg.tf.weight(c) * idf[i as usize] / norm;
                postings[i as usize].push((t as u32, w));
                ws.push((i, w));
            }
            weighted.push(ws);
        }
        // Leave-one-out nearest-neighbour distances of the training traces: how far
        // apart normal traces are in each region of the space.
        let mut dots = vec![0.0; nt];
        let own: Vec<f64> = weighted
            .iter()
            .enumerate()
            .map(|(t, ws)| {
                dots.iter_mut().for_each(|d| *d = 0.0);
                for &(i, w) in ws {
                    for &(u, uw) in &postings[i as usize] {
                        dots[u as usize] += w * uw;
                    }
                }
                dots[t] = f64::MIN;
                let best = dots.iter().copied().fold(f64::MIN, f64::max);
                if nt == 1 {
                    1.0
                } else {
                    (1.0 - best).max(0.0)
                }
            })
            .collect();
        let own_scale = (own.iter().sum::<f64>() / nt as f64).max(1e-6);
        Ok(Knn {
            unseen_idf: idf_of(0.0),
            own,
            own_scale,
            stored,
            index,
            idf,
            postings,
        })
    }

    /// The configuration.
    pub fn config(&self) -> KnnConfig {
        self.stored.config
    }

    fn keep(&self) -> impl Fn(u64, usize) -> bool + '_ {
        move |key, len| self.index.contains_key(&key) || len < MAX_UNSEEN + self.index.len()
    }

    /// Cosine distances from a bag to every training trace, sorted ascending, and the
    /// trace's scores.
    fn score_bag(&self, bag: &Bag, dots: &mut Vec<f64>) -> TraceResult {
        let cfg = self.stored.config;
        dots.clear();
        dots.resize(self.stored.traces.len(), 0.0);
        let mut norm = 0.0;
        for (&key, &c) in &bag.counts {
            let tf = cfg.tf.weight(c);
            match self.index.get(&key) {
                Some(&i) => {
                    let w = tf * self.idf[i as usize];
                    norm += w * w;
                    for &(t, tw) in &self.postings[i as usize] {
                        dots[t as usize] += w * tw;
                    }
                }
                None => norm += (tf * self.unseen_idf).powi(2),
            }
        }
        norm += bag.overflow as f64 * self.unseen_idf.powi(2);
        let scores = if bag.calls == 0 {
            vec![0.0, 0.0]
        } else {
            let norm = norm.sqrt().max(f64::MIN_POSITIVE);
            let (nn, best) = dots
                .iter()
                .copied()
                .enumerate()
                .fold((0, f64::MIN), |a, (i, d)| if d > a.1 { (i, d) } else { a });
            let nearest = (1.0 - best / norm).max(0.0);
            // Distance = 1 - cosine; the k nearest are the k largest dot products.
            let k = cfg.k.min(dots.len());
            dots.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
            let mean: f64 = dots[..k].iter().sum::<f64>() / k as f64;
            vec![
                (1.0 - mean / norm).max(0.0),
                nearest / (self.own[nn] + self.own_scale),
            ]
        };
        TraceResult {
            calls: bag.calls,
            anomalies: None,
            scores,
        }
    }
}

struct KnnStream<'a> {
    model: &'a Knn,
    bag: Bag,
}

impl TraceStream for KnnStream<'_> {
    fn call(&mut self, call: u32) -> f64 {
        let m = self.model;
        self.bag.push(call, m.stored.config.n, &m.keep());
        0.0
    }
    fn finish(self: Box<Self>) -> TraceResult {
        self.model.score_bag(&self.bag, &mut vec![])
    }
}

impl Detector for Knn {
    fn kind(&self) -> &str {
        "knn"
    }
    fn describe(&self) -> String {
        let c = self.stored.config;
        format!(
            "k={} n=1..{} tf={}{}",
            c.k,
            c.n,
            c.tf.name(),
            if c.idf { " idf" } else { "" }
        )
    }
    fn score_names(&self) -> Vec<String> {
        vec!["distance".into(), "relative".into()]
    }
    fn score_trace(&self, calls: &[u32], scratch: &mut Scratch) -> TraceResult {
        scratch.anomalies.clear();
        let mut bag = Bag::default();
        let keep = self.keep();
        for &c in calls {
            bag.push(c, self.stored.config.n, &keep);
        }
        self.score_bag(&bag, &mut vec![])
    }
    fn stream(&self) -> Box<dyn TraceStream + '_> {
        Box::new(KnnStream {
            model: self,
            bag: Bag::default(),
        })
    }
    fn trained_calls(&self) -> u64 {
        self.stored.calls
    }
    fn profile_size(&self) -> usize {
        self.stored.traces.len()
    }
    fn size_unit(&self) -> &'static str {
        "training traces"
    }
    fn save(&self) -> Vec<u8> {
        postcard::to_allocvec(&self.stored).expect("serialising plain data into a Vec cannot fail")
    }
}

/// Training: one count bag per trace, the vocabulary built at the end.
#[derive(Debug)]
pub struct KnnBuilder {
    config: KnnConfig,
    bags: Vec<HashMap<u64, u32>>,
    calls: u64,
}

impl KnnBuilder {
    /// An empty training set.
    pub fn new(config: KnnConfig) -> Self {
        KnnBuilder {
            config,
            bags: vec![],
            calls: 0,
        }
    }
}

impl DetectorBuilder for KnnBuilder {
    fn add_trace(&mut self, calls: &[u32]) {
        let mut bag = Bag::default();
        for &c in calls {
            bag.push(c, self.config.n, &|_, _| true);
        }
        self.calls += calls.len() as u64;
        self.bags.push(bag.counts);
    }

    fn build(self: Box<Self>, _progress: Progress<'_>) -> Result<Box<dyn Detector>, DetectorError> {
        Ok(Box::new(self.finish()?))
    }
}

impl KnnBuilder {
    /// The trained model.
    pub fn finish(self) -> Result<Knn, DetectorError> {
        if self.bags.is_empty() {
            return Err(DetectorError::Train {
                model: "knn".into(),
                msg: "no training traces".into(),
            });
        }
        let mut df: HashMap<u64, u32> = HashMap::default();
        for b in &self.bags {
            for &key in b.keys() {
                *df.entry(key).or_default() += 1;
            }
        }
        let mut vocab: Vec<(u64, u32)> = df.into_iter().collect();
        vocab.sort_unstable();
        let index: HashMap<u64, u32> = vocab
            .iter()
            .enumerate()
            .map(|(i, &(k, _))| (k, i as u32))
            .collect();
        let traces = self
            .bags
            .iter()
            .map(|b| {
                let mut v: Vec<(u32, u32)> = b.iter().map(|(k, &c)| (index[k], c)).collect();
                v.sort_unstable();
                v
            })
            .collect();
        Knn::from_stored(Stored {
            config: self.config,
            calls: self.calls,
            vocab,
            traces,
        })
        .map_err(|msg| DetectorError::Train {
            model: "knn".into(),
            msg,
        })
    }
}

/// The registry entry.
pub fn entry() -> Entry {
    Entry {
        name: "knn".into(),
        aliases: vec!["frequency".into()],
        about: "k nearest normal traces by TF-IDF n-gram frequency (cosine)".into(),
        params: ["k", "n", "tf", "idf"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        build: Arc::new(|p| {
            Ok(Box::new(KnnBuilder::new(KnnConfig::from_params(p)?)) as Box<dyn DetectorBuilder>)
        }),
        load: Arc::new(|payload| {
            let corrupt = |msg| DetectorError::Corrupt {
                model: "knn".into(),
                msg,
            };
            let stored: Stored = decode_all(payload).map_err(corrupt)?;
            Ok(Box::new(Knn::from_stored(stored).map_err(corrupt)?) as Box<dyn Detector>)
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn knn(config: KnnConfig, traces: &[&[u32]]) -> Knn {
        let mut b = KnnBuilder::new(config);
        for t in traces {
            b.add_trace(t);
        }
        b.finish().unwrap()
    }

    fn score(m: &Knn, t: &[u32]) -> Vec<f64> {
        m.score_trace(t, &mut Scratch::default()).scores
    }

    #[test]
    fn cosine_distances_by_hand() {
        // Calls alone, raw counts, no idf: vectors are plain call histograms.
        let cfg = KnnConfig {
            k: 1,
            n: 1,
            tf: Tf::Raw,
            idf: false,
        };
        // Training: A = (1,1,0) over calls {1,2,3}; B = (0,0,2).
        let m = knn(cfg, &[&[1, 2], &[3, 3]]);
        // Identical histogram to A (order ignored): distance 0.
        assert!(score(&m, &[2, 1])[0].abs() < 1e-12);
        // (1,0,1): cos with A = 1/(sqrt2*sqrt2) = .5, with B = 2/(sqrt2*2) = .7071.
        let d = score(&m, &[1, 3]);
        assert!((d[0] - (1.0 - 0.5f64.sqrt())).abs() < 1e-9, "{d:?}");
        // An unseen call only adds to the norm: (1,0,0,+1 unseen) vs A: 1/(sqrt2*sqrt2).
        let d = score(&m, &[1, 9]);
        assert!((d[0] - 0.5).abs() < 1e-9, "{d:?}");
        // k = 2 averages both neighbours: cos .5 (A) and .7071 (B) for (1,0,1).
        let m2 = knn(KnnConfig { k: 2, ..cfg }, &[&[1, 2], &[3, 3]]);
        let d = score(&m2, &[1, 3]);
        let mean = 1.0 - (0.5 + 0.5f64.sqrt()) / 2.0;
        assert!((d[0] - mean).abs() < 1e-9, "{d:?}");
        // relative: nearest distance over (the neighbour's own nearest-neighbour
        // distance + their mean). A and B are orthogonal: both own distances are 1.
        assert!(
            (d[1] - (1.0 - 0.5f64.sqrt()) / 2.0).abs() < 1e-6,
            "relative {d:?}"
        );
    }

    #[test]
    fn idf_and_ngrams_by_hand() {
        // n = 2, bool tf, idf over 2 traces: idf = ln(3 / (1 + df)) + 1.
        let cfg = KnnConfig {
            k: 1,
            n: 2,
            tf: Tf::Bool,
            idf: true,
        };
        let m = knn(cfg, &[&[1, 2], &[1, 3]]);
        // Terms of [1,2]: {1}, {2}, {1,2}; call 1 is in both traces (df 2: idf 1),
        // the others in one (idf ln 1.5 + 1).
        let rare = 1.5f64.ln() + 1.0;
        // Test [2,1]: terms {2} (rare), {1} (1), {2,1} unseen (idf ln 3 + 1).
        let unseen = 3f64.ln() + 1.0;
        let dot = rare * rare + 1.0;
        let norm_train = (2.0 * rare * rare + 1.0).sqrt();
        let norm_test = (rare * rare + 1.0 + unseen * unseen).sqrt();
        let want = 1.0 - dot / (norm_train * norm_test);
        let d = score(&m, &[2, 1]);
        assert!((d[0] - want).abs() < 1e-6, "{d:?} want {want}");
        // Bigrams see order: [1,2] is at distance 0, [2,1] is not.
        assert!(score(&m, &[1, 2])[0] < 1e-6);
    }

    #[test]
    fn empty_trace_and_bad_params() {
        let m = knn(KnnConfig::default(), &[&[1, 2, 3]]);
        assert_eq!(score(&m, &[]), vec![0.0, 0.0]);
        assert!(KnnConfig::from_params(&Params::parse("k=0").unwrap()).is_err());
        assert!(KnnConfig::from_params(&Params::parse("n=9").unwrap()).is_err());
        assert!(KnnConfig::from_params(&Params::parse("tf=cubic").unwrap()).is_err());
        assert!(KnnBuilder::new(KnnConfig::default()).finish().is_err());
    }
}
