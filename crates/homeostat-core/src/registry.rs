//! Model names to constructors and loaders: how `--model` names and profile kind tags
//! find their [`Detector`].
//!
//! The core cannot name models that live in crates depending on it (the neural
//! language model in `homeostat-lm`), so models are looked up in a [`Registry`] a
//! front end assembles: [`Registry::builtin`] holds this crate's models and each
//! external crate adds its own with [`Registry::register`]. The ensemble is handled
//! here, not as an entry, because building or loading one needs the registry itself
//! for its members.

use std::fmt;
use std::sync::Arc;

use crate::classic::{load_classic, AnyModel, ClassicBuilder};
use crate::detector::{Detector, DetectorBuilder, DetectorError, Params};
use crate::ensemble;
use crate::knn;
use crate::model::{ModelKind, ModelSpec};
use crate::profile::{decode_profile, ProfileError, ProfileMeta, StoredModel};

/// Builds an untrained model from its parameters.
pub type BuildFn =
    Arc<dyn Fn(&Params) -> Result<Box<dyn DetectorBuilder>, DetectorError> + Send + Sync>;
/// Rebuilds a trained model from its profile payload.
pub type LoadFn = Arc<dyn Fn(&[u8]) -> Result<Box<dyn Detector>, DetectorError> + Send + Sync>;

/// One registered model.
#[derive(Clone)]
pub struct Entry {
    /// The name on the command line and the profile kind tag.
    pub name: String,
    /// Other accepted spellings.
    pub aliases: Vec<String>,
    /// One line for help texts.
    pub about: String,
    /// Parameter names the model reads from [`Params`].
    pub params: Vec<String>,
    /// Constructor.
    pub build: BuildFn,
    /// Loader.
    pub load: LoadFn,
}

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Entry")
            .field("name", &self.name)
            .field("params", &self.params)
            .finish_non_exhaustive()
    }
}

/// The parameters the classic models read (besides defaults from the literature).
pub const CLASSIC_PARAMS: [&str; 5] = [
    "window",
    "locality",
    "rare_fraction",
    "threshold",
    "smoothing",
];

/// A classic model's spec from parameters.
pub fn classic_spec(kind: ModelKind, p: &Params) -> Result<ModelSpec, DetectorError> {
    let name = kind.name();
    let mut s = ModelSpec::new(kind);
    s.window = p.get(name, "window", s.window)?;
    s.locality = p.get(name, "locality", s.locality)?;
    s.rare_fraction = p.get(name, "rare_fraction", s.rare_fraction)?;
    s.threshold = p.get(name, "threshold", s.threshold)?;
    s.smoothing = p.get(name, "smoothing", s.smoothing)?;
    s.validate()?;
    Ok(s)
}

fn classic_entry(kind: ModelKind) -> Entry {
    let name = kind.name();
    let about = match kind {
        ModelKind::Stide => "stide: unseen call windows (Forrest et al. 1996)",
        ModelKind::TStide => "t-stide: unseen or rare call windows (Warrender et al. 1999)",
        ModelKind::Pairs => "lookahead pairs, as pH stores them (Somayaji 2002)",
        ModelKind::Markov => "n-gram Markov model with smoothed transitions",
    };
    let aliases = match kind {
        ModelKind::Stide => vec![],
        ModelKind::TStide => vec!["t-stide"],
        ModelKind::Pairs => vec!["lookahead", "lookahead-pairs", "ph"],
        ModelKind::Markov => vec!["ngram", "n-gram"],
    };
    Entry {
        name: name.to_string(),
        aliases: aliases.into_iter().map(String::from).collect(),
        about: about.to_string(),
        params: CLASSIC_PARAMS.iter().map(|s| s.to_string()).collect(),
        build: Arc::new(move |p| {
            Ok(
                Box::new(ClassicBuilder(AnyModel::new(classic_spec(kind, p)?)?))
                    as Box<dyn DetectorBuilder>,
            )
        }),
        load: Arc::new(move |payload| load_classic(name, payload)),
    }
}

/// The models a front end can build and load.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    entries: Vec<Entry>,
}

/// The ensemble's name prefix: `ensemble:knn,stide.rate`.
pub const ENSEMBLE: &str = "ensemble";

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Registry::default()
    }

    /// This crate's models: stide, tstide, pairs, markov, knn, kn, cover, hmm (and the ensemble,
    /// which every registry understands).
    pub fn builtin() -> Self {
        let mut r = Registry::new();
        for kind in ModelKind::ALL {
            r.register(classic_entry(kind));
        }
        r.register(knn::entry());
        r.register(crate::kn::entry());
        r.register(crate::cover::entry());
        r.register(crate::hmm::entry());
        r
    }

    /// Adds a model; a later entry with the same name replaces the earlier one.
    pub fn register(&mut self, e: Entry) {
        self.entries.retain(|x| x.name != e.name);
        self.entries.push(e);
    }

    /// The registered models, in registration order.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The entry for a name or alias (case-insensitive).
    pub fn get(&self, name: &str) -> Option<&Entry> {
        let n = name.to_ascii_lowercase();
        self.entries
            .iter()
            .find(|e| e.name == n || e.aliases.contains(&n))
    }

    fn unknown(&self, name: &str) -> DetectorError {
        let mut known: Vec<&str> = self.entries.iter().map(|e| e.name.as_str()).collect();
        known.push("ensemble:A,B,...");
        DetectorError::Unknown {
            name: name.to_string(),
            known: known.join(", "),
        }
    }

    /// The canonical name of a model argument (`t-stide` gives `tstide`; an ensemble
    /// keeps its member list), or an error naming the known models.
    pub fn canonical(&self, name: &str) -> Result<String, DetectorError> {
        if let Some(members) = ensemble::members_of(name) {
            let m = ensemble::parse_members(self, members)?;
            return Ok(ensemble::name_of(&m));
        }
        self.get(name)
            .map(|e| e.name.clone())
            .ok_or_else(|| self.unknown(name))
    }

    /// Every parameter name some registered model reads (for rejecting typos).
    pub fn known_params(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .entries
            .iter()
            .flat_map(|e| e.params.iter().cloned())
            .chain(ensemble::PARAMS.iter().map(|s| s.to_string()))
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// An untrained model by name (`stide`, `knn`, `ensemble:knn,stide.rate`, ...).
    /// Each model reads the parameters it knows and ignores the others, so one set of
    /// flags serves a list of models.
    pub fn builder(
        &self,
        name: &str,
        params: &Params,
    ) -> Result<Box<dyn DetectorBuilder>, DetectorError> {
        if let Some(members) = ensemble::members_of(name) {
            return ensemble::builder(self, members, params);
        }
        let e = self.get(name).ok_or_else(|| self.unknown(name))?;
        (e.build)(params)
    }

    /// Rebuilds a trained model from a stored kind tag and payload.
    pub fn load(&self, m: &StoredModel) -> Result<Box<dyn Detector>, DetectorError> {
        if m.kind == ENSEMBLE {
            return ensemble::load(self, &m.payload);
        }
        let e = self
            .entries
            .iter()
            .find(|e| e.name == m.kind)
            .ok_or_else(|| self.unknown(&m.kind))?;
        (e.load)(&m.payload)
    }

    /// Parses and validates a profile file holding any registered model.
    pub fn load_profile(&self, bytes: &[u8]) -> Result<DetectorProfile, ProfileError> {
        let s = decode_profile(bytes)?;
        let detector = self.load(&s.model).map_err(|e| match e {
            DetectorError::Unknown { known, .. } => ProfileError::UnsupportedModel {
                kind: s.model.kind.clone(),
                why: format!("this build does not know (it knows {known})"),
            },
            other => ProfileError::Corrupt(other.to_string()),
        })?;
        Ok(DetectorProfile {
            meta: s.meta,
            detector,
        })
    }
}

/// A trained detector of any kind with its provenance.
#[derive(Debug)]
pub struct DetectorProfile {
    /// Provenance.
    pub meta: ProfileMeta,
    /// The model.
    pub detector: Box<dyn Detector>,
}

impl DetectorProfile {
    /// The complete file contents (format version 2).
    pub fn to_bytes(&self) -> Vec<u8> {
        self.to_bytes_with(None)
    }

    /// The complete file contents with the symbol table of an argument-aware profile
    /// (format version 3; version 2 without one).
    pub fn to_bytes_with(&self, symbols: Option<&crate::symbols::SymbolTable>) -> Vec<u8> {
        crate::profile::encode_profile_with(
            &self.meta,
            StoredModel {
                kind: self.detector.kind().to_string(),
                payload: self.detector.save(),
            },
            symbols,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Scratch;
    use crate::profile::Profile;

    fn no_progress(_: u64, _: u64) {}

    #[test]
    fn names_aliases_and_unknowns() {
        let r = Registry::builtin();
        assert_eq!(r.canonical("t-stide").unwrap(), "tstide");
        assert_eq!(r.canonical("PH").unwrap(), "pairs");
        let e = r.canonical("hmm2").unwrap_err().to_string();
        assert!(
            e.contains("unknown model \"hmm2\"") && e.contains("knn"),
            "{e}"
        );
        assert!(r.known_params().contains(&"window".to_string()));
    }

    #[test]
    fn every_builtin_model_round_trips_through_a_profile() {
        let r = Registry::builtin();
        let train: Vec<Vec<u32>> = (0..12u32)
            .map(|i| (0..40).map(|j| (i + j) % 7 + 1).collect())
            .collect();
        let probe = [1u32, 2, 3, 9, 4, 5, 6, 7, 3, 3];
        // A small HMM: the default 150 states would take tens of seconds in a debug build.
        let mut params = Params::new();
        params.set("states", 4);
        params.set("iterations", 5);
        for e in r.entries() {
            let mut b = r.builder(&e.name, &params).unwrap();
            for t in &train {
                b.add_trace(t);
            }
            let d = b.build(&no_progress).unwrap();
            let p = DetectorProfile {
                meta: ProfileMeta::default(),
                detector: d,
            };
            let q = r.load_profile(&p.to_bytes()).unwrap();
            assert_eq!(q.detector.kind(), e.name);
            let mut s = Scratch::default();
            let a = p.detector.score_trace(&probe, &mut s);
            assert_eq!(a, q.detector.score_trace(&probe, &mut s), "{}", e.name);
            // Streaming gives the whole-trace result.
            let mut st = q.detector.stream();
            for &c in &probe {
                st.call(c);
            }
            assert_eq!(st.finish(), a, "{}", e.name);
        }
    }

    #[test]
    fn damaged_payloads_are_errors_not_panics() {
        // Every byte of each model's payload flipped in turn, and truncations: the
        // loaders must answer Ok or Err (the fuzz target covers random bytes).
        let r = Registry::builtin();
        let train: Vec<Vec<u32>> = (0..10u32)
            .map(|i| (0..30).map(|j| (i * j) % 6 + 1).collect())
            .collect();
        for name in ["knn", "ensemble:knn,stide.rate", "markov", "kn", "cover"] {
            let mut b = r.builder(name, &Params::parse("n=2").unwrap()).unwrap();
            for t in &train {
                b.add_trace(t);
            }
            let d = b.build(&no_progress).unwrap();
            let kind = d.kind().to_string();
            let payload = d.save();
            for i in 0..payload.len() {
                for bit in [0x01u8, 0x80] {
                    let mut p = payload.clone();
                    p[i] ^= bit;
                    if let Ok(m) = r.load(&StoredModel {
                        kind: kind.clone(),
                        payload: p,
                    }) {
                        m.score_trace(&[1, 2, 3, 99], &mut Scratch::default());
                    }
                }
            }
            for n in 0..payload.len() {
                let cut = StoredModel {
                    kind: kind.clone(),
                    payload: payload[..n].to_vec(),
                };
                assert!(r.load(&cut).is_err(), "{name}: truncated at {n} loads");
            }
        }
    }

    #[test]
    fn classic_front_ends_name_what_they_cannot_run() {
        let r = Registry::builtin();
        let mut b = r.builder("knn", &Params::new()).unwrap();
        b.add_trace(&[1, 2, 3]);
        let p = DetectorProfile {
            meta: ProfileMeta::default(),
            detector: b.build(&no_progress).unwrap(),
        };
        let e = Profile::from_bytes(&p.to_bytes()).unwrap_err().to_string();
        assert!(e.contains("holds a knn model"), "{e}");
        // An unknown kind tag is named, not a panic.
        let bytes = crate::profile::encode_profile(
            &ProfileMeta::default(),
            StoredModel {
                kind: "quantum".into(),
                payload: vec![1, 2, 3],
            },
        );
        let e = r.load_profile(&bytes).unwrap_err().to_string();
        assert!(e.contains("holds a quantum model"), "{e}");
    }
}
